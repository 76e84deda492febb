"""Receiving: the webhook endpoint, its signature, body, enrichment and HTTP server."""
