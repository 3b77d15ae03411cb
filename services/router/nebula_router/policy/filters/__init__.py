"""Filters: each narrows the candidates for a request (one module per filter)."""
