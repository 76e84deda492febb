"""`python -m ingest` is the `holysheep-ingest` command."""

from ingest.cli import main

raise SystemExit(main())
