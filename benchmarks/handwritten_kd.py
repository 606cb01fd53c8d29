"""A minimal hand-written knowledge-distillation loop, the reference dlkit distill is measured
against: plain PyTorch, the same student, data, labelled subset, loss, optimiser (AdamW),
cosine schedule, batch size and epochs, and nothing else (no checkpoints, no callbacks)."""

from __future__ import annotations

import numpy as np


def kd_pair(teacher, hparams: dict, cfg: dict, seed: int, labelled: int) -> tuple[float, float]:
    """(baseline, distilled) test accuracy of the hand-written loop for ``seed``."""
    import torch
    import torch.nn.functional as F
    from dlkit_distill.subset import labelled_indices

    from dlkit.infer.evaluate import evaluation_data
    from dlkit.plugins import get_registry
    from dlkit.training.build import build_model, load_model

    data = evaluation_data(teacher)
    spec = get_registry().model("mlp")
    x = torch.as_tensor(data.x_train)
    y = torch.as_tensor(data.y_train)
    idx = labelled_indices(data.y_train, labelled, seed) if labelled else np.arange(len(y))
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.as_tensor(idx)] = True
    module, _ = load_model(teacher)
    with torch.no_grad():
        soft = module.eval()(x)
    T, alpha = cfg["temperature"], cfg["alpha"]

    def train(distil: bool) -> float:
        torch.manual_seed(seed)
        student = build_model(spec, hparams, data.input_spec, data.num_classes)
        opt = torch.optim.AdamW(student.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["epochs"])
        # the baseline sees the labelled subset only, repeated to the transfer set's length
        rows = torch.arange(len(y)) if distil else torch.as_tensor(np.resize(idx, len(y)))
        gen = torch.Generator().manual_seed(seed)
        for _ in range(cfg["epochs"]):
            student.train()
            perm = rows[torch.randperm(len(rows), generator=gen)]
            for i in range(0, len(perm), cfg["batch_size"]):
                b = perm[i:i + cfg["batch_size"]]
                out = student(x[b])
                m = mask[b]
                hard = F.cross_entropy(out[m], y[b][m]) if m.any() else out.sum() * 0
                if distil:
                    kl = F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(soft[b] / T, 1), reduction="batchmean",
                                  log_target=True) * T * T
                    loss = alpha * kl + (1 - alpha) * hard
                else:
                    loss = hard
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        student.eval()
        with torch.no_grad():
            pred = student(torch.as_tensor(data.x_test)).argmax(1).numpy()
        return float((pred == data.y_test).mean())

    return train(False), train(True)
