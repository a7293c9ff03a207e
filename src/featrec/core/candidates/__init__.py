"""Candidates: which items a ranker scores for a request (serving) or a prediction point
(training sets).
"""
