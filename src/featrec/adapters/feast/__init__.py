"""Feast: the repo, its types, the online readers and writers, the version guard, online
deletes, and (in :mod:`featrec.adapters.feast.layout`) Feast's storage-layout codec.
"""
