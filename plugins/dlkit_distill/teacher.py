"""The teacher: a stored classifier's logits, through its PyTorch weights or, lacking those
(a third-party export, or a model whose architecture plugin is not installed), its model.onnx
through onnxruntime."""

from __future__ import annotations

from dlkit import InputError

BATCH = 512


class Teacher:
    """Logits of a stored classifier, whichever runtime holds it."""

    def __init__(self, version, module=None, session=None):
        self.version = version
        self.module = module
        self.session = session
        self.runtime = "torch" if module is not None else "onnx"
        self.device = "cpu"  # where the torch module runs
        if session is not None:
            names = [o.name for o in session.outputs]
            self.input_name = session.inputs[0].name
            self.output_name = "logits" if "logits" in names else names[0]

    @property
    def params(self) -> int | None:
        """Trainable parameter count: from meta.json, else counted in the weights or graph."""
        if isinstance(self.version.meta.get("params"), int):
            return self.version.meta["params"]
        if self.module is not None:
            return sum(p.numel() for p in self.module.parameters())
        import onnx

        from dlkit import graph_params

        return graph_params(onnx.load(str(self.version.onnx_path), load_external_data=False))

    def to(self, device: str) -> Teacher:
        if self.module is not None:
            self.module = self.module.to(device)
            self.device = device
        return self

    def logits(self, x):
        """Logits for ``x`` (numpy array or tensor), as a float32 tensor on ``x``'s device (no grad)."""
        import numpy as np
        import torch

        device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
        out = []
        with torch.no_grad():  # not inference_mode: the result feeds a loss that autograd records
            for i in range(0, len(x), BATCH):
                xb = x[i:i + BATCH]
                if self.module is not None:
                    xb = torch.as_tensor(xb, dtype=torch.float32).to(self.device)
                    out.append(self.module(xb).float().to(device))
                else:
                    array = xb.detach().cpu().numpy() if isinstance(xb, torch.Tensor) else xb
                    feeds = {self.input_name: np.ascontiguousarray(array, dtype=np.float32)}
                    result = self.session.run(feeds, [self.output_name])[self.output_name]
                    out.append(torch.from_numpy(np.asarray(result, dtype=np.float32)).to(device))
        return torch.cat(out) if out else torch.zeros((0, 0))


def check_teacher(version) -> None:
    """Refuse a teacher that is not a classifier, or has nothing to run."""
    task = version.meta.get("task", "classification")
    if task != "classification":
        raise InputError(f"teacher {version.ref} is a {task} model ({version.meta.get('arch')}); "
                         f"distillation needs a classifier")
    if not version.has_weights() and not version.has_onnx():
        raise InputError(f"teacher {version.ref} has neither model.safetensors nor model.onnx")


def load_teacher(version) -> Teacher:
    """The teacher through torch when its weights and architecture are here, else onnxruntime."""
    from dlkit import get_registry

    check_teacher(version)
    installed = version.meta.get("arch") in get_registry().names("model")
    if version.has_weights() and (installed or not version.has_onnx()):
        from dlkit import load_model

        module, _ = load_model(version)  # an uninstalled architecture is an InputError naming it
        return Teacher(version, module=module)
    from dlkit import Session

    return Teacher(version, session=Session(version.onnx_path, "cpu"))


def version_at(path: str):
    """The model version stored in folder ``path`` (``models/NAME/V``)."""
    from pathlib import Path

    from dlkit import META, ModelVersion

    folder = Path(path)
    if not path or not (folder / META).is_file() or not folder.name.isdigit():
        raise InputError(f"train.teacher must be a model version folder (models/NAME/V), got {path!r}")
    return ModelVersion(folder.parent.name, int(folder.name), folder)
