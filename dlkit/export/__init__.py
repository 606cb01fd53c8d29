"""Export: torch -> ONNX checked against torch (parity), and Triton's config.pbtxt."""
