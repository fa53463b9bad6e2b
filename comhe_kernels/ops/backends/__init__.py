"""One module per backend; each registers itself with ops/_registry.py when imported."""
