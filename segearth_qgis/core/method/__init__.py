"""SegEarth-OV's computation, exactly as the official code does it (docs/method.md §1-2)."""
