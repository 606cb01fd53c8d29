"""dlkit-quantize plugin (being built)."""
