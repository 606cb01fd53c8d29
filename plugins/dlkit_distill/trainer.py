"""The ``distill`` trainer: the supervised loop (checkpoints, early stopping, progress,
metrics.jsonl) with Hinton et al.'s soft-target loss in place of plain cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlkit import SupervisedTrainer

from .options import ALPHA, DEFAULTS, TEMPERATURE, validate

__all__ = ["ALPHA", "DEFAULTS", "TEMPERATURE", "DistillTrainer", "distillation_loss", "fit", "validate"]

def distillation_loss(student, teacher, labels, temperature: float, alpha: float, label_smoothing: float = 0.0,
                      labelled=None):
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``.

    The T^2 factor keeps the soft term's gradients at the scale of the hard term's as T changes
    (Hinton, Vinyals and Dean, 2015, section 2). ``labelled`` (a boolean mask of the batch) limits
    the hard term to the samples whose labels the student may use.
    """
    if labelled is None:
        hard = F.cross_entropy(student, labels, label_smoothing=label_smoothing)
    elif bool(labelled.any()):
        hard = F.cross_entropy(student[labelled], labels[labelled], label_smoothing=label_smoothing)
    else:
        hard = student.sum() * 0.0
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
        self.labelled = None
        if self.config.get("labelled"):
            import torch

            from .subset import labelled_indices

            mask = torch.zeros(len(run.data.y_train), dtype=torch.bool)
            mask[torch.as_tensor(labelled_indices(run.data.y_train, self.config["labelled"], run.seed))] = True
            self.labelled = mask.to(self.device)

    def loss(self, out, xb, yb, idx):
        cfg = self.config
        if cfg["alpha"] == 0:
            teacher = None
        elif self.soft_targets is not None:
            teacher = self.soft_targets[idx]
        else:
            teacher = self.teacher.logits(xb)
        mask = None if self.labelled is None else self.labelled[torch.as_tensor(idx, device=self.labelled.device)]
        if teacher is None and mask is not None:  # alpha 0: labels only, on the labelled samples
            return distillation_loss(out, out.detach(), yb, cfg["temperature"], 0.0, cfg["label_smoothing"], mask)
        return distillation_loss(out, teacher, yb, cfg["temperature"], cfg["alpha"], cfg["label_smoothing"], mask)


def fit(run) -> dict:
    """Train ``run.model`` to match the teacher in ``run.config["teacher"]`` (a version folder)."""
    from .teacher import load_teacher, version_at

    validate(run.config)
    teacher = load_teacher(version_at(run.config["teacher"]))
    return DistillTrainer(run, teacher).fit()
