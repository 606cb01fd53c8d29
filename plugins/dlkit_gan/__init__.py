"""dlkit-gan plugin (being built)."""
