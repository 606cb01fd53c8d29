"""``dlkit prune``: parse, call :func:`dlkit_prune.prune.prune`, print."""

from __future__ import annotations

import click


def add_command(cli) -> None:
    from dlkit import json_option, repo_option

    @cli.command("prune")
    @click.argument("ref")
    @click.option("--sparsity", type=float, default=0.5, show_default=True,
                  help="Fraction of the channels/neurons of each prunable layer to remove (0..1).")
    @click.option("--epochs", type=int, default=3, show_default=True, help="Fine-tuning epochs after pruning.")
    @click.option("--lr", type=float, help="Fine-tuning learning rate (default: a third of the parent's).")
    @click.option("--name", help="Name of the new model (default NAME-pruned).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fine-tuning run.")
    @click.option("--measure-seconds", type=float, default=1.0, show_default=True,
                  help="Seconds of timing against the parent per batch size.")
    @repo_option
    @json_option
    def prune_cmd(ref, sparsity, epochs, lr, name, seed, measure_seconds, repo, as_json):
        """Remove whole channels/neurons of NAME[:V], fine-tune, export: a smaller, faster dense model."""
        from dlkit import emit, open_repo

        from .prune import prune

        r = open_repo(repo)
        report = prune(r.resolve(ref), r, sparsity=sparsity, epochs=epochs, lr=lr, name=name, seed=seed,
                       measure_seconds=measure_seconds, quiet=as_json)
        emit(report, as_json, _human)


def _human(r: dict) -> None:
    m = r["measured"]
    score = next((k for k in ("test_accuracy", "test_rmse") if k in r["metrics"]), None)
    line = (f"pruned {r['parent']['name']}:{r['parent']['version']} -> {r['model']}:{r['version']}: "
            f"parameters {r['params_ratio']:.2f}x")
    if m.get("size_ratio") is not None:
        line += (f", size {m['size_ratio']:.2f}x, latency batch 1 {m['latency_b1_ratio']:.2f}x, "
                 f"batch 64 {m['latency_b64_ratio']:.2f}x")
    if score:
        line += (f"; {score} {r['metrics_parent'][score]:.4f} -> {r['metrics_pruned_before_fine_tuning'][score]:.4f} "
                 f"pruned -> {r['metrics'][score]:.4f} fine-tuned")
    click.echo(line)
    if m.get("note"):
        click.echo(f"  {m['note']}")
