"""Serving: the recommender (candidates -> features -> score -> rerank), its caches, its
configuration, the request-log record and explain.
"""
