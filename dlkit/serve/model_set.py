"""The model versions a server serves: loaded once at start-up from its own repository.

Every model with a ``model.onnx`` is served, each of its exported versions reachable by number
and the highest one by default. Nothing here takes a path from a client: requests name a model
and a version, which are looked up among what was loaded.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DlkitError, InputError
from ..store.repository import ModelRepository, ModelVersion, parse_ref
from .batcher import DynamicBatcher
from .metrics import ModelMetrics
from .pbtxt import configured_instances, label_files
from .protocol import ProtocolError, TensorSpec, spec_from_runtime

# Triton's name, chosen over the spec's example "onnx_onnxv1": it is what config.pbtxt says, so the
# metadata and the configuration agree, and what Triton answers for the same folder, which is what
# tritonclient-based tools (perf_analyzer, model navigator) expect.
PLATFORM = "onnxruntime_onnx"
_VERSION = re.compile(r"[0-9]{1,18}")
# The most bytes one element takes in a valid JSON request ("-1.2345678901234567e-300, " and the
# brackets of nesting), and slack for the names, the shape and whitespace.
JSON_BYTES_PER_ELEMENT = 64
BODY_SLACK = 1024 * 1024


@dataclass
class ServedModel:
    """One loaded model version: its runtime session, signature, batcher and metrics."""

    name: str
    version: int
    path: Path
    session: object  # dlkit.infer.session.Session
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int | None  # None: the graph has no dynamic batch dimension
    batcher: DynamicBatcher | None = None
    metrics: ModelMetrics | None = None
    max_body_bytes: int | None = None  # no valid request is larger; None: not bounded by the signature
    labels: dict[str, list[str]] | None = None  # output name -> class labels (the task's score outputs)
    label_files: dict[str, str] = field(default_factory=dict)  # output name -> config.pbtxt's label_filename
    fingerprint: tuple = ()  # model.onnx's (mtime_ns, size) when opened: a reload re-opens only changed files
    active: int = 0  # requests between look-up and answer: an unload waits for them
    sessions: list = field(default_factory=list)  # every instance's session (the first is ``session``)

    def __post_init__(self):
        if not self.sessions:
            self.sessions = [self.session]

    @property
    def instances(self) -> int:
        """Copies of the model that run batches in parallel."""
        return len(self.sessions)

    def run(self, feeds):
        """One runtime call on the first instance (in a worker thread)."""
        return self.session.run(feeds)

    def runners(self) -> list:
        """One run function per instance, for the batcher."""
        return [s.run for s in self.sessions]

    def classify(self, requested, outputs: dict) -> dict:
        """Triton's classification extension on the outputs that ask for it."""
        wanted = [w for w in requested if w.classification]
        if not wanted:
            return outputs
        from .strings import classify

        outputs = dict(outputs)
        for want in wanted:
            labels = (self.labels or {}).get(want.name)
            outputs[want.name] = classify(outputs[want.name], want.classification, labels,
                                          self.max_batch_size is not None)
        return outputs

    def metadata(self, versions: list[int]) -> dict:
        """The v2 model metadata response."""
        meta = {"name": self.name, "versions": [str(v) for v in versions], "platform": PLATFORM,
                "inputs": [s.as_dict() for s in self.inputs], "outputs": [s.as_dict() for s in self.outputs]}
        if self.labels:  # the labels, and which outputs they index (not in the spec's schema: an addition)
            meta["parameters"] = {"labels": next(iter(self.labels.values())), "label_outputs": list(self.labels)}
        return meta

    def config(self, max_queue_delay_ms: float, batching: bool) -> dict:
        """The model's configuration in Triton's JSON form (``GET .../config``)."""
        skip = 1 if self.max_batch_size else 0

        def tensor(spec: TensorSpec) -> dict:
            out = {"name": spec.name, "data_type": f"TYPE_{spec.datatype}", "dims": list(spec.shape[skip:])}
            if spec.name in self.label_files:
                out["label_filename"] = self.label_files[spec.name]
            return out

        config = {"name": self.name, "platform": PLATFORM, "backend": "onnxruntime",
                  "max_batch_size": self.max_batch_size or 0,
                  "input": [tensor(s) for s in self.inputs], "output": [tensor(s) for s in self.outputs]}
        kind = "KIND_GPU" if self.session.providers[0] != "CPUExecutionProvider" else "KIND_CPU"
        config["instance_group"] = [{"name": self.name, "count": self.instances, "kind": kind}]
        if self.labels:  # Triton names a label file per output; the labels themselves travel here
            config["parameters"] = {"labels": {"string_value": json.dumps(next(iter(self.labels.values())))},
                                    "label_outputs": {"string_value": ",".join(self.labels)}}
        if self.max_batch_size and batching:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": int(max_queue_delay_ms * 1000)}
        return config


class NotLoaded(ProtocolError):
    """A model the repository has but the server unloaded: 404 over REST, UNAVAILABLE over gRPC
    (as Triton answers a model with no available version)."""

    def __init__(self, message: str):
        super().__init__(message, 404)


class ModelSet:
    """Served versions by model name; look-ups answer 404 for anything not loaded."""

    def __init__(self, models: list[ServedModel]):
        self.by_name: dict[str, dict[int, ServedModel]] = {}
        self.unloaded: set[str] = set()  # names unloaded on request: they answer "not loaded"
        for m in models:
            self.by_name.setdefault(m.name, {})[m.version] = m

    def __iter__(self):
        for versions in self.by_name.values():
            yield from versions.values()

    def versions(self, name: str) -> list[int]:
        return sorted(self.by_name.get(name, {}))

    def replace(self, name: str, models: list[ServedModel]) -> list[ServedModel]:
        """Serve ``models`` as every version of ``name`` (none: unload it); returns the ones replaced."""
        old = list(self.by_name.pop(name, {}).values())
        if models:
            self.by_name[name] = {m.version: m for m in models}
        kept = {id(m) for m in models}
        return [m for m in old if id(m) not in kept]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The version named (the latest when None) or a 404 ProtocolError listing what exists."""
        versions = self.by_name.get(name)
        if versions is None:
            shown = name[:100]
            if name in self.unloaded:
                raise NotLoaded(f"model {shown!r} is not loaded (unloaded through the repository API)")
            raise ProtocolError(f"unknown model {shown!r} (serving: {', '.join(self.by_name) or 'none'})", 404)
        if version is None:
            return versions[max(versions)]
        # ASCII digits only: str.isdigit() accepts '²' and Arabic-Indic digits, which int() refuses or reads.
        if not _VERSION.fullmatch(version) or int(version) not in versions:
            raise ProtocolError(f"model {name!r} has no served version {version[:20]!r} "
                                f"(versions: {', '.join(map(str, sorted(versions)))})", 404)
        return versions[int(version)]


def load_models(repo: ModelRepository, refs: list[str] | None = None, provider: str = "auto",
                threads: int | None = None, max_batch_size: int = 64,
                allow_empty: bool = False, instances: int | None = None) -> list[ServedModel]:
    """Open every exported version in ``repo`` (or those of ``refs``: NAME or NAME:V).

    A model named in ``refs`` that cannot be served is an error; one found by listing the
    repository that onnxruntime refuses is skipped with a warning. ``allow_empty``: nothing to
    serve is fine (model control modes load models later).
    """
    if refs:
        chosen = []
        for ref in refs:
            name, version = parse_ref(ref)
            versions = [version] if version is not None else repo.versions(name)
            if not versions:
                repo.resolve(name)  # raises what is there instead: another name, or a graph without meta.json
            found = [v for v in (repo.resolve(f"{name}:{n}") for n in versions) if v.has_onnx()]
            if not found:
                raise InputError(f"model {ref!r} has no model.onnx in {repo.root}: run `dlkit export onnx {ref}` first")
            chosen.extend((v, True) for v in found if all(v != c for c, _ in chosen))
    else:
        chosen = [(v, False) for v in repo.all_versions() if v.has_onnx()]
    if not chosen and allow_empty:
        return []
    if not chosen:
        raise InputError(f"no model in {repo.root} has a model.onnx: run `dlkit export onnx NAME` first")
    served = []
    for version, named in chosen:
        try:
            served.append(open_version(version, provider, threads, max_batch_size, instances))
        except DlkitError as exc:
            if named:
                raise
            print(f"dlkit serve: warning: skipping {version.ref}: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - deliberate: a hostile file must not stop the server
            # (metadata nested 1e5 deep, 5000-digit integers: RecursionError, ValueError, ...)
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            if named:
                raise InputError(f"{version.ref} cannot be served: {reason}") from None
            print(f"dlkit serve: warning: skipping {version.ref}: {reason}", file=sys.stderr)
    if not served and not allow_empty:
        raise InputError(f"no model in {repo.root} could be loaded")
    return served


def open_version(version: ModelVersion, provider: str = "auto", threads: int | None = None,
                 max_batch_size: int = 64, instances: int | None = None) -> ServedModel:
    """One version's ONNX graph in ``instances`` onnxruntime sessions, with its v2 signature.

    ``instances`` None: the count of the model's config.pbtxt ``instance_group``, else 1.
    """
    from ..infer.onnx_files import check_external_data
    from ..infer.session import Session

    check_external_data(version.onnx_path)
    fingerprint = onnx_fingerprint(version)
    count = instances or configured_instances(version.path.parent / "config.pbtxt") or 1
    sessions = [Session(version.onnx_path, provider, threads=threads) for _ in range(count)]
    session = sessions[0]
    inputs = [spec_from_runtime(i) for i in session.inputs]
    outputs = [spec_from_runtime(o) for o in session.outputs]
    # Batch along the first axis only when every input and output has it dynamic.
    batchable = all(s.shape and s.shape[0] == -1 for s in inputs + outputs)
    batch = max_batch_size if batchable else None
    return ServedModel(version.name, version.version, version.path, session, inputs, outputs, batch,
                       max_body_bytes=body_bound(inputs, batch), fingerprint=fingerprint,
                       sessions=sessions, **_labels(version, outputs))


def _labels(version: ModelVersion, outputs: list[TensorSpec]) -> dict:
    """``labels`` and ``label_files``: the label files config.pbtxt names, as Triton reads them
    (one label per line), else meta.json's labels on the task's score outputs."""
    folder = version.path.parent
    files = {name: f for name, f in label_files(folder / "config.pbtxt").items()
             if any(spec.name == name for spec in outputs)}
    if not files:
        return {"labels": class_labels(version, outputs)}
    labels = {}
    for name, filename in files.items():
        try:
            labels[name] = (folder / filename).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{folder / filename}: the label file of output {name!r} cannot be read "
                             f"({getattr(exc, 'strerror', None) or exc})") from None
    return {"labels": labels, "label_files": files}


def class_labels(version: ModelVersion, outputs: list[TensorSpec]) -> dict[str, list[str]]:
    """The labels of meta.json for each graph output the model's task says holds class scores."""
    try:
        meta = version.meta
        labels = meta.get("labels")
        if not isinstance(labels, list) or not labels:
            return {}
        from ..plugins import get_registry

        task = get_registry().task_of(meta)
    except DlkitError:  # no meta.json, or a task no installed plugin registers: no labels
        return {}
    present = {spec.name for spec in outputs}
    names = [name for name in (task.scores if task is not None else ()) if name in present]
    return {name: [str(label) for label in labels] for name in names}


def onnx_fingerprint(version: ModelVersion) -> tuple:
    """What tells a re-exported model.onnx from the one loaded: its mtime and size."""
    st = version.onnx_path.stat()
    return (st.st_mtime_ns, st.st_size)


def body_bound(inputs: list[TensorSpec], max_batch_size: int | None) -> int | None:
    """The largest body (JSON or binary) a valid request can have, or None when the signature
    does not bound it (a dynamic dimension beyond the batch, or strings)."""
    elements = 0
    for spec in inputs:
        dims = spec.shape[1:] if max_batch_size else spec.shape
        if any(d < 0 for d in dims) or spec.datatype == "BYTES":
            return None
        elements += (max_batch_size or 1) * math.prod(dims)
    return elements * JSON_BYTES_PER_ELEMENT + BODY_SLACK
