"""Helpers shared by test modules (imported as `support.*`)."""
