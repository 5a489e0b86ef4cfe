"""Cross-framework tests: the same weights and the same episode give the same numbers."""
