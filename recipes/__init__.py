"""Recipes built on vmtr: how particular models were trained (never imported by the library)."""
