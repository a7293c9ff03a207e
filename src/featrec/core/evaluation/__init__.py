"""Offline evaluation: the next-item protocol, its metrics, and A/B experiment bucketing."""
