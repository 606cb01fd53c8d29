"""Training: the ``train()`` API, the supervised trainer, callbacks, resume state, distributed runs."""
