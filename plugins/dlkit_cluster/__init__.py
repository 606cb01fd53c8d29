"""dlkit-cluster: clustering as a task family, written as a third-party plugin would be.

Registers the task ``clustering`` (no training targets; silhouette, and ARI/NMI when the data
has labels; exports ``cluster`` and ``distances``), the architecture ``autoencoder`` (an MLP
encoder/decoder for tabular rows, convolutional for images, with the k-means centroids of its
embeddings as a buffer) and its trainer ``autoencoder`` (reconstruction loss on dlkit's epoch
loop, then scikit-learn's KMeans). Everything heavy is imported inside the functions.
"""

from dlkit import hookimpl

DEFAULTS = {
    "clusters": None,  # K, or auto (None): the best silhouette for K in 2..10
    "embedding": 10,  # size of the embedding k-means runs on
    "hidden": [128, 64],  # tabular: the encoder's hidden widths (the decoder mirrors them)
    "channels": [16, 32],  # images: the encoder's stride-2 convolutions (the decoder mirrors them)
    "dropout": 0.0,
    "encoder": "auto",  # auto: convolutional for images, MLP for rows | mlp: images flattened into an MLP
}

TRAIN_DEFAULTS = {
    "epochs": 60,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-4,  # AdamW
    "patience": 10,  # early stopping on the validation reconstruction loss; 0: never
    "augment": 0,  # images: random shifts of up to N pixels, zero padded
    "noise": 0.0,  # denoising: Gaussian noise of this standard deviation on the (standardised) inputs
    "n_init": 10,  # k-means initialisations (the best inertia is kept)
    "device": "auto",
}


def build(hparams, input_spec, num_outputs):
    """The autoencoder for ``input_spec`` (``num_outputs``, the labels' count, is not used: K is)."""
    from .model import ClusterAutoencoder

    k = hparams.get("clusters")
    if not (k is None or k == "auto" or (isinstance(k, int) and not isinstance(k, bool) and k >= 2)):
        raise ValueError(f"clusters must be auto or a whole number >= 2, got {k!r}")
    if hparams["encoder"] not in ("auto", "mlp"):
        raise ValueError(f"encoder must be auto or mlp, got {hparams['encoder']!r}")
    if not input_spec["shape"] or int(input_spec["shape"][0]) < 1:
        raise ValueError("the data has no numeric column")
    model = ClusterAutoencoder(input_spec, hparams["embedding"], hparams["hidden"], hparams["channels"],
                               hparams["dropout"], k if isinstance(k, int) else 0, hparams["encoder"])
    model.requested = "auto" if k is None else k
    return model


def fit(run):
    from .trainer import fit as autoencoder_fit

    return autoencoder_fit(run)


def _metrics(distances, targets):
    from .task import metrics

    return metrics(distances, targets)


def _describe(outputs, names, meta, top_k):
    from .task import describe

    return describe(outputs, names, meta, top_k)


def _export(module, meta):
    from .task import export

    return export(module, meta)


def _quality(version, dataset, repo, session):
    from .check import quality

    return quality(version, dataset, repo, session)


@hookimpl
def register_models(register):
    register("autoencoder", build, input_kinds={"tabular", "image"}, defaults=DEFAULTS, trainer="autoencoder",
             task="clustering", description="autoencoder whose embeddings k-means clusters (MLP or conv)")


@hookimpl
def register_trainers(register):
    register("autoencoder", fit, defaults=TRAIN_DEFAULTS,
             description="reconstruction loss, then k-means on the training embeddings")


@hookimpl
def register_tasks(register):
    register("clustering", _metrics, output="distances", target_dtype="int64", score="silhouette",
             higher_is_better=True, export=_export, describe=_describe, quality=_quality,
             description="groups without labels: silhouette; ARI and NMI when the data has labels")
