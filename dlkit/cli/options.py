"""Options shared by commands (also for plugin commands), and opening the repository."""

from __future__ import annotations


import click




def _group_repo(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """The command's own --repo first, then the group's (``dlkit --repo X models``), then
    $DLKIT_REPO, then the default."""
    if ctx.get_parameter_source(param.name) is not click.core.ParameterSource.COMMANDLINE:
        group = ctx.find_root().params.get("repo")
        if group is not None:
            return group
    return value


repo_option = click.option(
    "--repo", type=click.Path(file_okay=False), envvar="DLKIT_REPO", default="models", show_default=True,
    callback=_group_repo, help="Model repository folder (or $DLKIT_REPO; also accepted before the command).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


def open_repo(repo: str):
    from dlkit.store.repository import ModelRepository

    return ModelRepository(repo)


# -- export and inference: export onnx, predict, bench, providers ---------------------------------
provider_option = click.option(
    "--provider", default="auto", show_default=True,
    help="onnxruntime execution provider: auto (TensorRT, then CUDA, then CPU), cpu, cuda, tensorrt or any "
         "provider name; an unavailable one falls back to CPU with a warning.",
)
strict_provider_option = click.option(
    "--strict-provider", is_flag=True, help="Fail instead of falling back to CPU when the provider is unavailable.")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1),
    help="Compute threads for torch and onnxruntime (default: $DLKIT_THREADS, else the CPUs this process may "
         "use, shared among --nproc processes).")
optimization_option = click.option(
    "--optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="all", show_default=True,
    help="onnxruntime graph optimization level.")


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {text!r}",
                                 param_hint=option)
    return values


