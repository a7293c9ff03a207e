"""Pure logic. Never imports feast, redis, bytewax or click (checked by import-linter)."""
