"""Nebula node."""
