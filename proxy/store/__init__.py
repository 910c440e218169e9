"""Persistence behind small interfaces: sqlite (default) and redis."""
