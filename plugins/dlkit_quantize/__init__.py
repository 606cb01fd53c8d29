"""dlkit-quantize: int8 and float16 models from a model's ONNX graph, on onnxruntime's quantizer.

Registers the compressors ``quantize-auto``, ``quantize-dynamic``, ``quantize-static`` and
``quantize-fp16`` and the command ``dlkit quantize``. ``auto`` builds the candidates that make
sense for the graph, measures each one's quality and latency on this machine, and keeps the
fastest within the tolerance (see :mod:`dlkit_quantize.quantize`). Nothing heavy is imported
here: onnx and onnxruntime load when a compressor or the command runs.
"""

from dlkit import hookimpl

COMPRESSORS = {
    "auto": "measure dynamic/static/fp16 candidates here; keep the fastest within the accuracy tolerance",
    "dynamic": "int8 MatMul/Gemm/LSTM weights, activations quantized per call (onnxruntime quantize_dynamic)",
    "static": "int8 weights and activations calibrated on the training split, QDQ or QOperator",
    "fp16": "float16 weights and arithmetic, float32 inputs and outputs (GPU providers)",
}


def _compressor(method: str):
    def compress(source, options, repo):
        """``compress(source, options, repo)``: options are dlkit_quantize.quantize.quantize's."""
        from .quantize import quantize

        report = quantize(source, repo, **{**options, "method": method})
        return repo.resolve(f"{report['model']}:{report['version']}")

    compress.__name__ = f"quantize_{method}"
    return compress


@hookimpl
def register_compressors(register):
    for method, description in COMPRESSORS.items():
        register(f"quantize-{method}", _compressor(method), description=description)


@hookimpl
def register_commands(cli):
    from .cli import add_command

    add_command(cli)
