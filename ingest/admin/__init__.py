"""Setting up the systems we ship to: Elasticsearch assets and Kibana saved objects."""
