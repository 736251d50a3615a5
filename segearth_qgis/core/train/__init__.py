"""Training: the SAR student distilled from the optical model (docs/method.md §3.3)."""
