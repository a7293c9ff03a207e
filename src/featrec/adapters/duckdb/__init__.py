"""DuckDB: long-term user and item features computed by SQL over the event log."""
