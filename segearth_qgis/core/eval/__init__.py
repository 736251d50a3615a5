"""Scores against reference labels, as the papers measure them."""
