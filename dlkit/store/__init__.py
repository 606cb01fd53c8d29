"""The model repository and everything it stores: versions, meta.json, weights, recipes, atomic files.

Never imports torch, onnx or sklearn: the CLI, ``predict`` and the server read the repository.
"""
