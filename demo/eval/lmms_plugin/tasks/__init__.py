"""Task YAMLs lmms-eval adds to its search path for this plugin (none yet)."""
