"""Helpers shared by several test modules (fixtures stay in conftest.py)."""
