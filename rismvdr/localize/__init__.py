"""Localization: the one detector, the method registry and every method family."""
