"""Scorers: each rates every candidate in [0, 1], higher is better (one module per scorer)."""
