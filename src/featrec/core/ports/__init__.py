"""Ports: the small interfaces (Protocols) the application talks to, with in-memory reference
implementations.
"""
