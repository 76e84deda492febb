"""Shipping: the shipper loop, bulk planning, and the Elasticsearch and Logstash sinks."""
