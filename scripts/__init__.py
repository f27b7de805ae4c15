"""Developer scripts: run from the checkout root, e.g. `python -m scripts.bad_inputs /tmp/corpus`."""
