"""Command-line tools for weights: `python -m weights.download`, `.convert`, `.cache`."""
