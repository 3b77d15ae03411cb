"""Nebula scheduler."""
