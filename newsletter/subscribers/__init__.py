"""Subscribers: the table (repository) and the rules of adding them (rules: validation, CSV)."""
