"""dlkit-gan: a DCGAN-style generative adversarial network, its trainer and ``dlkit generate``.

Registers the model ``gan`` (task ``generation``; the exported graph is the generator), the
trainer ``gan`` (alternating updates, quality metrics judged by a classifier), the task
``generation`` (its compressors' quality check is the Frechet distance) and the command
``dlkit generate``. Everything heavy is imported inside the functions.
"""

from dlkit import hookimpl

DEFAULTS = {
    "latent": 32,  # noise size
    "g_widths": [128, 64],  # generator feature maps, one 2x upsampling step each
    "d_widths": [64, 128],  # discriminator feature maps, one 2x downsampling step each
    "conditional": True,  # the class label is an input of both networks
    "embed": 16,  # size of the generator's label embedding (conditional only)
    "spectral_norm": False,  # spectral normalisation in the discriminator (instead of batch norm)
}

TRAIN_DEFAULTS = {
    "epochs": 30,
    "batch_size": 64,
    "lr": 2e-4,  # generator (and discriminator unless d_lr is set)
    "d_lr": 0.0,  # discriminator learning rate; 0: the same as lr
    "beta1": 0.5,  # Adam beta1 as in DCGAN
    "beta2": 0.999,
    "loss": "nonsaturating",  # nonsaturating | hinge
    "label_smoothing": 0.0,  # one-sided: real targets become 1 - s (nonsaturating loss only)
    "d_steps": 1,  # discriminator updates per generator update
    "ema": 0.99,  # the generator kept is an average of its weights over ~1/(1 - ema) steps; 0: the last
    "grid_every": 1,  # save a sample grid every N epochs into <version>/epochs/; 0: never
    "collapse_steps": 100,  # stop when the discriminator loss sits at its floor this many steps; 0: never
    "collapse_loss": 0.01,  # ... "at its floor" means within this much of it
    "samples": 1000,  # generated images the quality metrics are computed on
    "judge": "auto",  # classifier for the quality metrics: auto | none | a model NAME[:V]
    "judge_epochs": 15,  # epochs of the auto judge, when it has to be trained
    "device": "auto",
}


def build(hparams, input_spec, num_classes):
    from .model import GAN

    gan = GAN(input_spec["shape"], num_classes, input_spec.get("range") or (0.0, 1.0), **hparams)
    gan.hparams = dict(hparams)  # lets the trainer rebuild an untrained twin for reference
    return gan


def export(module, meta):
    """The generator as an ONNX graph: ``noise`` (and ``label``) -> ``image`` in the data's range."""
    import torch

    from dlkit import OnnxGraph

    from .model import generator_graph

    latent, classes, conditional = module.latent, module.num_classes, module.conditional

    def sample(batch, generator):
        # the parity check's inputs: standard-normal noise and random labels
        inputs = {"noise": torch.randn(batch, latent, generator=generator)}
        if conditional:
            inputs["label"] = torch.randint(0, classes, (batch,), generator=generator)
        return inputs

    metadata = {"latent": latent, "conditional": conditional, "output": "image",
                "output_range": [module.low, module.high], "image_shape": list(meta["input_spec"]["shape"])}
    return OnnxGraph(module=generator_graph(module), example_inputs=sample(4, torch.Generator().manual_seed(0)),
                     output_names=["image"], metadata=metadata, sample=sample)


def fit(run):
    from .trainer import fit as gan_fit

    return gan_fit(run)


@hookimpl
def register_models(register):
    register("gan", build, input_kinds={"image"}, defaults=DEFAULTS, trainer="gan", task="generation",
             export=export, description="DCGAN-style generator and discriminator (optionally class-conditional)")


@hookimpl
def register_trainers(register):
    register("gan", fit, defaults=TRAIN_DEFAULTS,
             description="adversarial training (non-saturating or hinge loss), judged by a classifier")


def _not_scored(outputs, targets):
    from .quality import not_scored

    return not_scored(outputs, targets)


def _quality_check(version, dataset, repo, session):
    from .quality import quality_check

    return quality_check(version, dataset, repo, session)


@hookimpl
def register_tasks(register):
    register("generation", _not_scored, output="image", target_dtype="int64", score="frechet_distance",
             quality=_quality_check, description="images from noise (and a class): judged by a classifier's "
                                                 "Frechet distance")


@hookimpl
def register_commands(cli):
    import click

    from dlkit import emit
    from dlkit import json_option, open_repo, provider_option, repo_option

    @cli.command("generate")
    @click.argument("ref")
    @click.option("-n", "n", type=int, default=64, show_default=True, help="How many images.")
    @click.option("--label", help="Only this class (name or index), for conditional models.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Noise seed: the same seed, the same images.")
    @click.option("--out", default="generated.png", show_default=True, help="PNG grid to write ('' for none).")
    @click.option("--npy", help="Also write the raw (N, C, H, W) float32 array to this .npy file.")
    @provider_option
    @repo_option
    @json_option
    def generate_cmd(ref, n, label, seed, out, npy, provider, repo, as_json):
        """Generate images with a GAN's exported generator (NAME or NAME:V), without torch."""
        from .generate import generate

        result = generate(open_repo(repo).resolve(ref), n=n, label=label, seed=seed, out=out or None,
                          npy=npy, provider=provider)

        def human(r):
            what = f" of class {r['label']}" if r["label"] is not None else ""
            written = " and ".join(p for p in (r["out"], r["npy"]) if p) or "nowhere (no --out or --npy)"
            click.echo(f"generated {r['n']} images{what} with {r['model']}:{r['version']} -> {written}")

        emit(result, as_json, human)
