"""Inference through onnxruntime, never torch: sessions and providers, ONNX file checks, predict,
evaluate and bench (torch only for their ``--runtime torch`` comparisons, imported when asked)."""
