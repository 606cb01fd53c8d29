"""dlkit-plugin-example: one third-party plugin that uses every dlkit hook.

Only ``hookimpl`` is imported at module level: dlkit imports this module on every command,
``dlkit --help`` included, so torch is imported inside the functions registered here.
"""

from dlkit import hookimpl

TCN_DEFAULTS = {
    "channels": [32, 32],  # one residual block per entry; block i dilates by 2**i
    "kernel": 3,
    "dropout": 0.1,
}


def build_tcn(hparams, input_spec, num_classes):
    from .tcn import TCN

    return TCN(input_spec, num_classes, **hparams)


def fit_focal(run):
    from .focal import fit

    return fit(run)


def sparsify(source, options, repo):
    from .sparsify import sparsify_version

    return sparsify_version(source, options, repo)


def load_chirps(source, options, seed):
    from .chirps import load

    return load(source, options, seed)


@hookimpl
def register_models(register):
    register("tcn", build_tcn, input_kinds={"sequence", "image"}, defaults=TCN_DEFAULTS, trainer="focal",
             description="temporal convolution network: dilated causal 1-D convolutions over time (image rows)")


@hookimpl
def register_trainers(register):
    from dlkit import SUPERVISED_DEFAULTS as DEFAULTS  # light: the core has imported it already

    register("focal", fit_focal, defaults={**DEFAULTS, "gamma": 2.0},
             description="the supervised loop with focal loss (gamma 0 is cross-entropy)")


@hookimpl
def register_compressors(register):
    register("sparsify", sparsify, description="magnitude pruning of Linear/Conv weights into zeros "
                                               "(torch.nn.utils.prune; dlkit prune removes whole channels)")


@hookimpl
def register_datasets(register):
    register("chirps", load_chirps, kind="sequence",
             description="synthetic chirps (32 steps, 1 feature): rising, falling or steady frequency")


@hookimpl
def register_commands(cli):
    import click

    from dlkit import emit, json_option, open_repo, repo_option

    @cli.command("sparsify")
    @click.argument("ref")
    @click.option("--amount", type=float, default=0.5, show_default=True,
                  help="Fraction of the weights to zero, smallest magnitudes first.")
    @click.option("--scope", type=click.Choice(["global", "layer"]), default="global", show_default=True,
                  help="Rank weights across all layers, or prune each layer by --amount.")
    @click.option("--name", help="Name of the new model (default NAME-sparse).")
    @repo_option
    @json_option
    def sparsify_cmd(ref, amount, scope, name, repo, as_json):
        """Magnitude-prune (zero) the weights of a stored model into a new model (example plugin)."""
        from dlkit import get_registry

        repository = open_repo(repo)
        source = repository.resolve(ref)
        options = {"amount": amount, "scope": scope, "name": name}
        version = get_registry().compressor("sparsify").compress(source, options, repository)
        meta = version.meta
        result = {"model": version.name, "version": version.version, "path": str(version.path),
                  "parent": meta["parent"], "method": meta["method"], "sparsity": meta["sparsity"],
                  "metrics": meta["metrics"]}

        def human(r):
            m = r["metrics"]
            click.echo(f"sparsified {source.ref} -> {r['model']}:{r['version']}: sparsity {r['sparsity']:.1%}, "
                       f"test accuracy {m['parent_test_accuracy']:.4f} -> {m['test_accuracy']:.4f}")

        emit(result, as_json, human)
