"""Example models built from code (seeded, no downloads) and their archives."""
