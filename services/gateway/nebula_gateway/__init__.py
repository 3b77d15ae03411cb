"""Nebula gateway."""
