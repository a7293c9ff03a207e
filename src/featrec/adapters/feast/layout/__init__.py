"""Feast's online storage layout, encoded and decoded by hand.

This package mirrors a private detail of Feast 0.67: entity key serialization v3, the
mmh3 field hashes and the serialized ``feast.types.Value`` protobufs that Feast's Redis and
SQLite online stores hold. Feast does not promise it; the contract tests
(``tests/contract/test_online_contract.py``, ``test_feast_wire*.py``) pin it by reading every
value written here back through stock ``get_online_features``, and
:mod:`featrec.adapters.feast.version_guard` refuses a Feast version other than 0.67.
"""
