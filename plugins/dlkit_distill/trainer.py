"""The ``distill`` trainer: the supervised loop (checkpoints, early stopping, progress,
metrics.jsonl) with Hinton et al.'s soft-target loss in place of plain cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F

from dlkit import SupervisedTrainer

from .options import ALPHA, DEFAULTS, TEMPERATURE, validate

__all__ = ["ALPHA", "DEFAULTS", "TEMPERATURE", "DistillTrainer", "distillation_loss", "fit", "validate"]

def distillation_loss(student, teacher, labels, temperature: float, alpha: float, label_smoothing: float = 0.0):
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``.

    The T^2 factor keeps the soft term's gradients at the scale of the hard term's as T changes
    (Hinton, Vinyals and Dean, 2015, section 2).
    """
    hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    if alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * hard


class DistillTrainer(SupervisedTrainer):
    """SupervisedTrainer whose loss adds the teacher's softened outputs."""

    def __init__(self, run, teacher):
        super().__init__(run)
        self.teacher = teacher.to(self.device)
        augment = self.config["augment"] if run.data.kind == "image" else 0
        # Soft targets for the training set's own samples are computed once. Augmented batches
        # are new images the teacher never labelled, so then the teacher labels each batch as
        # the student sees it (a stale target for the unshifted image would teach the wrong thing).
        self.soft_targets = None
        if not augment and self.config["alpha"] > 0:
            self.soft_targets = teacher.logits(run.data.x_train).to(self.device)

    def loss(self, out, xb, yb, idx):
        cfg = self.config
        if cfg["alpha"] == 0:
            teacher = None
        elif self.soft_targets is not None:
            teacher = self.soft_targets[idx]
        else:
            teacher = self.teacher.logits(xb)
        return distillation_loss(out, teacher, yb, cfg["temperature"], cfg["alpha"], cfg["label_smoothing"])


def fit(run) -> dict:
    """Train ``run.model`` to match the teacher in ``run.config["teacher"]`` (a version folder)."""
    from .teacher import load_teacher, version_at

    validate(run.config)
    teacher = load_teacher(version_at(run.config["teacher"]))
    return DistillTrainer(run, teacher).fit()
