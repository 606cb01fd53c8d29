"""Looking around: ``dlkit plugins``, ``models`` and ``show``."""

from __future__ import annotations


import click
from dlkit.cli.group import cli
from dlkit.errors import DlkitError
from dlkit.cli.options import json_option, open_repo, repo_option
from dlkit.cli.output import console, emit, fmt_metric, table




# -- plugins and the repository ----------------------------------------------------------------
@cli.command("plugins")
@json_option
def plugins_cmd(as_json):
    """List installed plugins, their versions and what each registered."""
    from dlkit.plugins import get_plugins

    infos = [i.as_dict() for i in get_plugins().infos.values()]

    def human(_):
        rows = []
        for i in infos:
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in i["registered"].items())
            if i["error"]:
                what = f"[red]{i['error']}[/red]"
            hooks = ", ".join(h.removeprefix("register_") for h in i["hooks"])
            rows.append([i["name"], i["distribution"] or "", i["version"] or "",
                         "built-in" if i["builtin"] else "third-party", hooks, what])
        console().print(table("Plugins", ["plugin", "distribution", "version", "kind", "hooks", "registers"], rows))

    emit({"plugins": infos}, as_json, human)


@cli.command("models")
@repo_option
@json_option
def models_cmd(repo, as_json):
    """List the models in the repository with their versions and key metrics."""
    r = open_repo(repo)
    items = []
    for v in r.all_versions():
        try:
            meta = v.meta
        except DlkitError as exc:  # one broken version must not hide the others
            click.echo(f"dlkit: skipping {v.ref}: {exc}", err=True)
            items.append({"name": v.name, "version": v.version, "arch": None, "task": None, "method": None,
                          "params": None, "metrics": {}, "onnx": False, "created": None, "error": str(exc)})
            continue
        task = meta.get("task")
        metrics = meta.get("metrics")
        items.append({"name": v.name, "version": v.version, "arch": meta.get("arch"),
                      "task": task if isinstance(task, str) else None, "method": meta.get("method"),
                      "params": meta.get("params"), "metrics": metrics if isinstance(metrics, dict) else {},
                      "onnx": v.has_onnx(), "created": meta.get("created")})

    def human(_):
        if not items:
            missing = "" if r.root.is_dir() else f" (no such folder: check --repo or $DLKIT_REPO)"
            click.echo(f"no models in {r.root} yet{missing}: try `dlkit train cnn`")
            return
        scores = [_key_metric(i) for i in items]
        names = {name for name, _ in scores if name}
        # One score for every row (all classifiers, say): named once in the header, to keep it narrow.
        shown = [value if len(names) == 1 else f"{name} {value}".strip() for name, value in scores]
        header = names.pop() if len(names) == 1 else "score"  # on the test split
        rows = [[i["name"], i["version"], "[red]unreadable[/red]" if "error" in i else i["arch"], i["method"] or "",
                 i["params"], score,
                 "yes" if i["onnx"] else "", _minutes(i["created"])] for i, score in zip(items, shown)]
        console().print(table(f"Models in {r.root}", ["name", "version", "arch", "method", "params",
                                                      header, "onnx", "created"], rows))

    emit({"repository": str(r.root), "models": items}, as_json, human)


def _minutes(created: str | None) -> str:
    """``2026-12-02T08:12:27+00:00`` -> ``2026-12-02 08:12`` (the table stays in 80 columns)."""
    return (created or "")[:16].replace("T", " ")


def _key_metric(item: dict) -> tuple[str, str]:
    """(the name of the model's task score, its value on the test split), or empty strings."""
    from dlkit.plugins import get_registry

    registry = get_registry()
    name = item.get("task") or "classification"
    if name not in registry.names("task"):
        return "", ""
    score = registry.task(name).score
    value = item["metrics"].get(f"test_{score}", item["metrics"].get(score))
    return (score, fmt_metric(value)) if value is not None else ("", "")


@cli.command("show")
@click.argument("ref")
@repo_option
@json_option
def show_cmd(ref, repo, as_json):
    """Show one version's meta.json (NAME or NAME:V)."""
    v = open_repo(repo).resolve(ref)
    meta = {**v.meta, "path": str(v.path), "files": sorted(p.name for p in v.path.iterdir())}

    def human(m):
        rows = [[key, _cell(value)] for key, value in m.items()]
        console().print(table(f"{v.ref} ({v.path})", ["field", "value"], rows))

    emit(meta, as_json, human)


def _cell(value) -> str:
    """A meta.json value for a table cell: scalars as they are, a dict one ``key: value`` a line."""
    import json

    if isinstance(value, dict):
        return "\n".join(f"{k}: {_cell(v) if isinstance(v, dict) else json.dumps(v, default=str)}"
                         for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value)) if all(not isinstance(x, (dict, list)) for x in value) \
            else json.dumps(value, default=str)
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else str(value))


@cli.command("show-arch")
@click.argument("arch")
@json_option
def show_arch_cmd(arch, as_json):
    """The --set keys of architecture ARCH: its model hyper-parameters and its trainer's options,
    with their defaults."""
    from dlkit.plugins import get_registry

    registry = get_registry()
    spec = registry.model(arch)
    trainer = registry.trainer(spec.trainer)
    report = {"arch": spec.name, "plugin": spec.plugin, "task": spec.task, "inputs": list(spec.input_kinds),
              "trainer": trainer.name, "model": dict(spec.defaults), "train": spec.train_options(trainer)}

    def human(r):
        rows = [[f"model.{k}", _cell(v)] for k, v in r["model"].items()]
        rows += [[f"train.{k}", _cell(v)] for k, v in r["train"].items()]
        click.echo(f"{r['arch']}: {r['task']}, inputs {', '.join(r['inputs'])}, trainer {r['trainer']} "
                   f"(plugin {r['plugin']})")
        console().print(table("--set KEY=VALUE", ["key", "default"], rows))

    emit(report, as_json, human)


