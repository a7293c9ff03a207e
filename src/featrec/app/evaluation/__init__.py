"""Evaluating: the replay evaluation of every policy, its report, and the A/B report."""
