"""`python -m ingest` is the `holysheep-ingest` command."""

from ingest.cli.parser import main

raise SystemExit(main())
