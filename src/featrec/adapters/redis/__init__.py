"""Redis: the event bus (streams), the fast row reader, the bulk writer, the request log and
the deny-list.
"""
