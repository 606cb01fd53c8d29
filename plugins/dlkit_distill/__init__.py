"""dlkit-distill plugin (being built)."""
