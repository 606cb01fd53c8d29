"""``dlkit distill`` as a Python API: a teacher in the repository in, a small student model out."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

from dlkit import InputError, ModelRepository, ModelVersion

OPTIONS = ("student", "sets", "temperature", "alpha", "epochs", "baseline", "name", "seed", "data", "quiet")


@dataclass
class DistillResult:
    """The new student version and the report stored in its meta.json."""

    version: ModelVersion

    @property
    def report(self) -> dict:
        return self.version.meta["distill"]["report"]

    def as_dict(self) -> dict:
        meta = self.version.meta
        return {"model": self.version.name, "version": self.version.version, "path": str(self.version.path),
                "params": meta["params"], "metrics": meta["metrics"], "parent": meta["parent"],
                "method": meta["method"], "report": self.report}


def distill(teacher: str | ModelVersion, student: str, *, sets: list[str] | tuple = (),
            temperature: float | None = None, alpha: float | None = None, epochs: int | None = None,
            baseline: bool = False, name: str | None = None, seed: int = 0, data: str | None = None,
            repo: ModelRepository | None = None, quiet: bool = True) -> DistillResult:
    """Train ``student`` (an architecture name) on ``teacher``'s softened outputs.

    ``sets`` are ``KEY=VALUE`` items for the student's hyper-parameters and training options
    (as ``dlkit train --set``); ``baseline`` also trains the same student from scratch (same
    seed, options and data) for the report. Bad input raises :class:`InputError` before
    anything is written.
    """
    import torch

    from dlkit import (
        WEIGHTS,
        DlkitError,
        Recipe,
        check_compatible,
        check_name,
        check_options,
        derive,
        evaluation_data,
        get_registry,
        recipe_from,
        save_tensors,
        trained_meta,
    )

    from .options import DEFAULTS, validate
    from .teacher import check_teacher, load_teacher

    repo = repo or ModelRepository()
    source = repo.resolve(teacher) if isinstance(teacher, str) else teacher
    check_teacher(source)
    registry = get_registry()
    spec = registry.model(student)
    if spec.task != "classification":
        raise InputError(f"--student {student} is a {spec.task} architecture; the student must be a classifier")
    trainer_defaults = {k: v for k, v in DEFAULTS.items() if k != "teacher"}
    recipe = recipe_from(Recipe(arch=student, seed=seed, data={}), sets=sets, trainer_defaults=trainer_defaults,
                         temperature=temperature, alpha=alpha, epochs=epochs)
    if recipe.data:
        # Another split would put samples the teacher trained on into the student's test set.
        raise InputError(f"--set data.{next(iter(recipe.data))}: distillation uses the teacher's data split")
    if "teacher" in recipe.train:
        raise InputError("--set teacher: the teacher is the TEACHER argument")
    hparams = check_options("model", recipe.model, spec.defaults)
    config = check_options("train", recipe.train, DEFAULTS)
    config["teacher"] = str(source.path)
    validate(config)
    out_name = check_name(name or f"{source.name}-distilled-{student}")

    dataset = evaluation_data(source, data)  # the teacher's own split, or --data with its labels
    check_compatible(spec, dataset.input_spec, dataset.name)
    mentor = load_teacher(source)
    probe = dataset.x_val[:2]
    try:
        teacher_outputs = mentor.logits(probe).shape[-1]
    except (DlkitError, RuntimeError) as exc:
        raise InputError(f"teacher {source.ref} cannot run on {dataset.name} inputs of shape "
                         f"{list(probe.shape[1:])}: {str(exc).splitlines()[0][:200]}") from None
    if teacher_outputs != dataset.num_classes:
        raise InputError(f"teacher {source.ref} outputs {teacher_outputs} logits but its data set "
                         f"{dataset.name} has {dataset.num_classes} classes")
    model = build_student(spec, hparams, dataset, seed)
    try:
        with torch.no_grad():
            student_outputs = model.eval()(torch.as_tensor(probe)).shape[-1]
    except RuntimeError as exc:
        raise InputError(f"student {student} with {hparams} cannot take {dataset.name} inputs of shape "
                         f"{list(probe.shape[1:])}: {str(exc).splitlines()[0][:200]}") from None
    if student_outputs != teacher_outputs:
        raise InputError(f"student {student} outputs {student_outputs} values per sample, teacher "
                         f"{source.ref} outputs {teacher_outputs}; they must match")

    with derive(repo, source, "distill", out_name, inherit=()) as new:
        model, metrics = train_student(model, spec, dataset, config, seed, new.path, quiet, mentor)
        save_tensors(new.path / WEIGHTS, model.state_dict())
        train = {k: v for k, v in config.items() if k != "teacher"}  # a path that moves with the repository
        new.meta.update(trained_meta(spec, "distill", hparams, train, seed, dataset, model, metrics))
        params = new.meta["params"]
        report = {
            "teacher": {"model": source.ref, "runtime": mentor.runtime, "params": mentor.params,
                        "test_accuracy": teacher_accuracy(mentor, dataset)},
            "student": {"arch": student, "params": params, "test_accuracy": metrics["test_accuracy"],
                        "val_accuracy": metrics["val_accuracy"]},
            "baseline": None,
        }
        if baseline:
            from .subset import labelled_only

            # The baseline has the labels only: with `labelled`, only the labelled subset.
            base_data = labelled_only(dataset, config["labelled"], seed) if config["labelled"] else dataset
            with tempfile.TemporaryDirectory(prefix="dlkit-baseline-") as workdir:
                scratch = build_student(spec, hparams, base_data, seed)
                _, base = train_student(scratch, spec, base_data, config, seed, workdir, quiet, None)
            report["baseline"] = {"arch": student, "params": params, "test_accuracy": base["test_accuracy"],
                                  "val_accuracy": base["val_accuracy"], "test_loss": base["test_loss"]}
        report.update(summarise(report))
        new.meta["distill"] = {"teacher": {"name": source.name, "version": source.version, "runtime": mentor.runtime},
                               "temperature": config["temperature"], "alpha": config["alpha"], "report": report}
    return DistillResult(new.version)


def build_student(spec, hparams: dict, dataset, seed: int):
    """The student's initial weights: a function of the seed alone, so the baseline starts equal."""
    import torch

    from dlkit import build_model

    torch.manual_seed(seed)
    return build_model(spec, hparams, dataset.input_spec, dataset.num_classes)


def train_student(model, spec, dataset, config: dict, seed: int, workdir, quiet: bool, teacher):
    """Fit ``model`` with the distillation loss (``teacher``) or plain cross-entropy (None);
    returns the trained model (CPU, eval mode) and its metrics."""
    from pathlib import Path

    from dlkit import CHECKPOINT, SupervisedTrainer, TrainRun, task_metrics

    from .trainer import DistillTrainer

    run = TrainRun(model=model, spec=spec, data=dataset, config=config, seed=seed, workdir=Path(workdir),
                   quiet=quiet)
    trainer = DistillTrainer(run, teacher) if teacher is not None else SupervisedTrainer(run)
    metrics = dict(trainer.fit())
    (Path(workdir) / CHECKPOINT).unlink(missing_ok=True)  # resume is not offered: the run is short
    model = run.model.cpu().eval()
    metrics.update(task_metrics(model, dataset))
    return model, metrics


def teacher_accuracy(teacher, dataset) -> float:
    """The teacher's accuracy on the student's test split, through the runtime that taught."""
    from dlkit import softmax_cross_entropy

    logits = teacher.logits(dataset.x_test).cpu().numpy()
    return softmax_cross_entropy(logits, dataset.y_test)[0]


def summarise(report: dict) -> dict:
    """Parameter ratio (teacher / student) and, with a baseline, the share of the gap recovered."""
    teacher, student, base = report["teacher"], report["student"], report["baseline"]
    ratio = teacher["params"] / student["params"] if teacher["params"] and student["params"] else None
    gap = recovered = None
    if base is not None:
        gap = teacher["test_accuracy"] - base["test_accuracy"]
        # No gap (or a baseline that beats the teacher): there is nothing to recover.
        if gap > 0:
            recovered = (student["test_accuracy"] - base["test_accuracy"]) / gap
    return {"param_ratio": ratio, "gap": gap, "gap_recovered": recovered}


def compress(source: ModelVersion, options: dict, repo: ModelRepository) -> ModelVersion:
    """The ``distill`` compressor: ``options`` are :func:`distill`'s keyword arguments."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise InputError(f"distill: unknown option {sorted(unknown)[0]!r}; known: {', '.join(OPTIONS)}")
    if not options.get("student"):
        raise InputError("distill: option 'student' (an architecture name) is required")
    options = dict(options)
    return distill(source, options.pop("student"), repo=repo, **options).version
