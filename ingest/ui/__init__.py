"""The built-in dashboard (`/ui/`) and its JSON API (`/api/v1/`) over the report catalogue."""
