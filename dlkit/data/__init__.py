"""Data sets: numpy splits, the built-in sets, loaders for user files, and ``load_dataset``.

numpy only (scikit-learn is imported by the digits loader when it is called).
"""
