"""Item signals: co-visitation neighbours, trending, and the co-visitation session scorer."""
