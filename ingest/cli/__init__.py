"""The `holysheep-ingest` command: the parser, and its commands grouped by what they touch."""
