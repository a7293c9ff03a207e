"""SQLite: the bulk writer into Feast's SQLite online store, and the request log."""
