"""The ``focal`` trainer: dlkit's supervised loop with the focal loss of Lin et al. (2017).

Focal loss scales each sample's cross-entropy by ``(1 - p)**gamma``, ``p`` the probability of
the true class, so well-classified samples weigh less. ``gamma = 0`` is plain cross-entropy.
"""

from dlkit import InputError, SupervisedTrainer
from dlkit import validate_supervised as validate


def focal_loss(logits, target, gamma: float, label_smoothing: float = 0.0):
    """Mean focal loss of ``logits`` (N, K) against class indices ``target`` (N,)."""
    import torch.nn.functional as F

    log_p = F.log_softmax(logits, dim=1)
    k = logits.shape[1]
    q = F.one_hot(target, k).to(log_p.dtype) * (1 - label_smoothing) + label_smoothing / k
    weight = (1 - log_p.exp()).clamp(min=0) ** gamma
    return -(q * weight * log_p).sum(dim=1).mean()


class FocalTrainer(SupervisedTrainer):
    """Everything the supervised trainer does (checkpoints, resume, early stopping); another loss."""

    def loss(self, out, xb, yb, idx):
        return focal_loss(out, yb, self.config["gamma"], self.config["label_smoothing"])


def fit(run) -> dict:
    """Train ``run.model`` with focal loss; returns the metrics for meta.json."""
    validate(run.config)
    gamma = run.config["gamma"]
    if not 0 <= gamma <= 10:
        raise InputError(f"train.gamma must be between 0 and 10, got {gamma}")
    return FocalTrainer(run).fit()
