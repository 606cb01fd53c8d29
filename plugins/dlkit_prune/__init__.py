"""dlkit-prune: structured pruning that makes models smaller and faster.

Registers the compressor ``prune``, the command ``dlkit prune NAME --sparsity S`` and the
architecture ``pruned`` (a registered architecture rebuilt at its pruned sizes, so that a pruned
model loads, evaluates, exports, distills and quantizes like any other). Whole channels and
neurons are removed (torch-pruning's dependency graph keeps every layer that reads them
consistent: batch norms, the next layer's inputs, flattening), the smaller dense model is
fine-tuned a few epochs on the supervised trainer, exported to ONNX and measured against its
parent: size and latency at batch 1 and 64. Nothing heavy is imported here.
"""

from dlkit import hookimpl

DEFAULTS = {"base": {"arch": "mlp", "hparams": {}}, "shapes": {}}


def compress(source, options, repo):
    """The ``prune`` compressor: ``options`` are :func:`dlkit_prune.prune.prune`'s keyword arguments."""
    from .prune import prune

    report = prune(source, repo, **options)
    return repo.resolve(f"{report['model']}:{report['version']}")


def build(hparams, input_spec, num_outputs):
    from .rebuild import build_pruned

    return build_pruned(hparams, input_spec, num_outputs)


def export(module, meta):
    from .rebuild import export_pruned

    return export_pruned(module, meta)


@hookimpl
def register_models(register):
    # The defaults (an MLP, nothing pruned) exist so the architecture builds like every registered
    # one (conformance checks); real pruned models record their base and shapes in meta.json.
    register("pruned", build, input_kinds={"tabular", "image"}, defaults=DEFAULTS,
             task=["classification", "regression"], export=export,
             description="a registered architecture at the sizes `dlkit prune` left (made by dlkit prune only)")


@hookimpl
def register_compressors(register):
    register("prune", compress, description="structured pruning: whole channels/neurons removed, then fine-tuned")


@hookimpl
def register_commands(cli):
    from .cli import add_command

    add_command(cli)
