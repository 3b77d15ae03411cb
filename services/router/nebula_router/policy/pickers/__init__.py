"""Pickers: each chooses one replica and names why (one module per picker).

Pickers form a fallback chain: an affinity picker places what it can and hands
the rest to the next one; the last picker always chooses.
"""
