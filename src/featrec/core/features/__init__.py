"""The feature catalog (names and types of every view), feature rows, freshness, snapshot days."""
