"""How good generated images are, judged by a classifier of the same data set.

There is no accuracy for a generator. A classifier trained by dlkit on the same data (the
*judge*) gives two measures instead:

- the Frechet distance between the judge's penultimate-layer features of real training
  images and of generated ones (FID's formula, with a small digits classifier standing in for
  Inception): 0 when the two feature distributions share mean and covariance;
- class coverage: of ``samples`` generated images, how many classes the judge predicts with
  probability >= 0.9, and the mean of its highest probability (how recognisable they are).

``judge = "auto"`` trains a small CNN with :func:`dlkit.training.train` the first time and
caches it in the repository as ``gan-judge-<data>``; later runs on the same data (source,
options and split seed) reuse it. ``judge = "NAME[:V]"`` uses any classifier of the repository
trained on the same labels and image shape.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from dlkit import InputError

CONFIDENCE = 0.9
JUDGE_PREFIX = "gan-judge-"
JUDGE_RECIPE = {
    "model": {"channels": [16, 32], "hidden": 64, "dropout": 0.25},
    "train": {"batch_size": 64, "lr": 0.003, "augment": 1, "patience": 0, "schedule": "cosine"},
}


def judge_name(dataset) -> str:
    """``gan-judge-<data set name>``, made safe as a model name."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", dataset.name.lower()).strip("-._") or "data"
    return (JUDGE_PREFIX + slug)[:128]


def obtain_judge(ref: str, dataset, repo, seed: int, epochs: int, quiet: bool = True):
    """The judge's model version: ``ref`` from the repository, or the cached/new auto judge."""
    if ref != "auto":
        version = repo.resolve(ref)
        check_judge(version, dataset, f"train.judge={ref}")
        return version
    name = judge_name(dataset)
    for v in reversed(repo.versions(name)):
        version = repo.resolve(f"{name}:{v}")
        if _same_data(version.meta, dataset):
            return version
    from dlkit import Recipe, train

    if not quiet:
        print(f"dlkit: training the judge classifier {name} for the quality metrics "
              f"(cached in {repo.root} for later runs)", file=sys.stderr)
    source = dataset.source
    recipe = Recipe(arch="cnn", name=name, seed=seed,
                    data={"source": source["source"], **source.get("options", {}), "seed": source.get("seed", 0)},
                    model=dict(JUDGE_RECIPE["model"]), train={**JUDGE_RECIPE["train"], "epochs": epochs})
    return train(recipe, repo, quiet=True).version


def _same_data(meta: dict, dataset) -> bool:
    recorded = meta.get("data") or {}
    source = dataset.source
    return (meta.get("task") == "classification" and meta.get("labels") == dataset.labels
            and list(meta.get("input_spec", {}).get("shape", [])) == list(dataset.input_spec["shape"])
            and all(recorded.get(k) == source.get(k) for k in ("source", "loader", "options", "seed")))


def check_judge(version, dataset, what: str) -> None:
    """A judge must be a classifier of the same labels and image shape."""
    meta = version.meta
    if meta.get("task", "classification") != "classification":
        raise InputError(f"{what}: model {version.ref} is a {meta.get('task')} model, not a classifier")
    if meta.get("labels") != dataset.labels:
        raise InputError(f"{what}: model {version.ref} has labels {meta.get('labels')}, the data has {dataset.labels}")
    shape = list(meta.get("input_spec", {}).get("shape", []))
    if shape != list(dataset.input_spec["shape"]):
        raise InputError(f"{what}: model {version.ref} takes inputs {shape}, "
                         f"the images are {dataset.input_spec['shape']}")


class Judge:
    """A classifier's probabilities and penultimate features (the input of its last Linear)."""

    def __init__(self, version):
        import torch
        from torch import nn

        from dlkit import load_model

        self.version = version
        self.module, _ = load_model(version)
        linears = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise InputError(f"judge {version.ref} has no final Linear layer to take features from")
        self._features = None
        linears[-1].register_forward_hook(self._keep_input)
        self._torch = torch

    def _keep_input(self, module, inputs, output):
        self._features = inputs[0].detach()

    def __call__(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """(features, probabilities) of images in the data's value range."""
        torch = self._torch
        feats, probs = [], []
        with torch.inference_mode():
            for i in range(0, len(images), batch_size):
                logits = self.module(torch.as_tensor(images[i:i + batch_size], dtype=torch.float32))
                probs.append(torch.softmax(logits.float(), dim=1).numpy())
                feats.append(self._features.flatten(1).float().numpy())
        return np.concatenate(feats).astype(np.float64), np.concatenate(probs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets (rows = samples).

    The trace of the matrix square root is computed as the sum of the square roots of the
    eigenvalues of S_a^1/2 S_b S_a^1/2 (symmetric, so ``eigh`` is exact and stable).
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
    return max(value, 0.0)


def coverage(probs: np.ndarray, requested: np.ndarray | None = None) -> dict:
    """Class coverage and confidence of the judge's predictions on generated images."""
    top = probs.argmax(1)
    confident = probs.max(1) >= CONFIDENCE
    counts = np.bincount(top[confident], minlength=probs.shape[1])
    out = {"class_coverage": int((counts > 0).sum()), "classes": int(probs.shape[1]),
           "mean_max_probability": float(probs.max(1).mean()),
           "confident_per_class": [int(c) for c in counts]}
    if requested is not None:  # conditional: does the judge see the class that was asked for?
        out["label_accuracy"] = float((top == requested).mean())
    return out


def measure(gan, judge: Judge, real: np.ndarray, samples: int, seed: int, untrained=None) -> dict:
    """Quality metrics of ``gan`` (and the Frechet distance of ``untrained``, same sampling)."""
    real_features, _ = judge(real)
    images, labels = sample(gan, samples, seed)
    features, probs = judge(images)
    metrics = {"frechet_distance": frechet_distance(real_features, features)}
    if untrained is not None:
        base_images, _ = sample(untrained, samples, seed)
        base = frechet_distance(real_features, judge(base_images)[0])
        metrics["frechet_distance_untrained"] = base
        metrics["frechet_ratio"] = metrics["frechet_distance"] / base if base > 0 else float("nan")
    metrics.update(coverage(probs, labels))
    metrics.update(quality_samples=int(samples), judge=judge.version.ref, frechet_real_images=int(len(real)))
    return metrics


def summary(m: dict) -> str:
    """One line for people: the quality metrics of a trained GAN."""
    line = (f"quality ({m['judge']}, {m['quality_samples']} samples): "
            f"class coverage {m['class_coverage']}/{m['classes']}, "
            f"mean max-probability {m['mean_max_probability']:.3f}")
    if "label_accuracy" in m:
        line += f", label accuracy {m['label_accuracy']:.3f}"
    line += f", Frechet distance {m['frechet_distance']:.2f}"
    if "frechet_distance_untrained" in m:
        line += f" (untrained generator {m['frechet_distance_untrained']:.2f})"
    return line


def sample(gan, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` images in the data's range (eval mode); conditional models cycle through classes."""
    import torch

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, gan.latent, generator=g)
    labels = torch.arange(n) % gan.num_classes if gan.conditional else None
    gan.eval()
    with torch.inference_mode():
        images = torch.cat([gan(noise[i:i + 500], None if labels is None else labels[i:i + 500])
                            for i in range(0, n, 500)])
    return images.numpy(), (None if labels is None else labels.numpy())


class FrechetCheck:
    """A generator's quality: the Frechet distance between a judge classifier's features of real
    training images and of generated ones (the GAN plugin's measure), on the same noise for the
    parent and every candidate; the drop is the distance's increase in percent. The outputs
    compared with the parent's are the generated images."""

    kind = "frechet"
    unit = "percent"
    default_tolerance = 10.0
    SAMPLES = 1000
    SEED = 1234

    def __init__(self, version, dataset, repo, session):
        self.quality = quality = sys.modules[__name__]
        self.dataset = dataset
        recorded = (version.meta.get("metrics") or {}).get("judge")
        judge = None
        if recorded:
            try:
                judge = repo.resolve(recorded)
            except InputError:
                print(f"dlkit: warning: {version.ref}'s judge {recorded} is not in the repository; "
                      f"using the cached or a new one", file=sys.stderr)
        if judge is None:
            judge = quality.obtain_judge("auto", dataset, repo, 0, 15, quiet=False)
        self.judge = quality.Judge(judge)
        self.judge_ref = judge.ref
        self.real = self.judge(dataset.split("train")[0])[0]
        inputs = {i.name: i for i in session.inputs}
        if "noise" not in inputs:
            raise InputError(f"{version.onnx_path}: a generator graph needs a 'noise' input, found {', '.join(inputs)}")
        latent = inputs["noise"].shape[-1]
        self.latent = latent if isinstance(latent, int) else int((version.meta.get("hparams") or {}).get("latent", 0))
        self.label_dtype = inputs["label"].dtype if "label" in inputs else None
        self.conditional = self.label_dtype is not None
        self.classes = len(version.meta.get("labels") or [])

    def _feeds(self, n: int, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        feeds = {"noise": rng.standard_normal((n, self.latent), dtype=np.float32)}
        if self.conditional:
            feeds["label"] = (np.arange(n) % max(self.classes, 1)).astype(self.label_dtype)
        return feeds

    def measure(self, session) -> tuple[dict, np.ndarray]:
        """(Frechet distance, the generated images)."""
        feeds = self._feeds(self.SAMPLES, self.SEED)
        images = np.concatenate([session.run({k: v[i:i + 500] for k, v in feeds.items()}, ["image"])["image"]
                                 for i in range(0, self.SAMPLES, 500)]).astype(np.float32)
        features, _ = self.judge(images)
        return {"frechet_distance": self.quality.frechet_distance(self.real, features)}, images

    def drop(self, parent: dict, row: dict) -> float:
        """Increase of the Frechet distance over the parent's, in percent."""
        base = parent["frechet_distance"]
        return (row["frechet_distance"] - base) / base * 100 if base > 0 else row["frechet_distance"] * 100

    def ratios(self, parent: dict, row: dict) -> dict:
        base = parent["frechet_distance"]
        return {"frechet_ratio": row["frechet_distance"] / base if base else None}

    def metrics(self, row: dict) -> dict:
        return {"frechet_distance": row["frechet_distance"], "judge": self.judge_ref,
                "quality_samples": self.SAMPLES}

    columns = [("frechet", "frechet_distance", ".3f")]

    def calibration_feeds(self, samples: int) -> tuple[dict, dict]:
        source = "standard normal noise" + (" and cycling labels" if self.conditional else "")
        return self._feeds(samples, 0), {"source": source, "seed": 0, "samples": int(samples)}

    def latency_feeds(self, batch: int) -> dict:
        return self._feeds(batch, 1)


def quality_check(version, dataset, repo, session) -> FrechetCheck:
    """The ``generation`` task's check for compressors (``dlkit quantize`` of a generator)."""
    return FrechetCheck(version, dataset, repo, session)


def not_scored(outputs, targets) -> dict:
    """A generator has no predictions to score against labels."""
    raise InputError("a generator has no predictions to score: its quality (Frechet distance, class coverage) "
                     "is measured when it trains; see `dlkit show` and `dlkit generate`")
