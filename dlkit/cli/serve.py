"""``dlkit serve``."""

from __future__ import annotations

import click

from dlkit.cli.group import cli
from dlkit.cli.options import open_repo, repo_option


# -- serving ---------------------------------------------------------------------------------------
@cli.command("serve")
@repo_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (warns off loopback without a token).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: any free one; the address is printed on stderr).")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="Port of the KServe v2 gRPC endpoint (0: off).")
@click.option("--models", help="Comma-separated NAME or NAME:V to serve (default: every model with a model.onnx).")
@click.option("--provider", default="auto", show_default=True, help="onnxruntime provider: auto, cpu, cuda, tensorrt.")
@click.option("--max-batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="Most rows per runtime call, and per request.")
@click.option("--max-queue-delay-ms", type=click.FloatRange(0), default=2.0, show_default=True,
              help="Longest wait for batch-mates that are already arriving.")
@click.option("--max-queue-size", type=click.IntRange(1), default=1024, show_default=True,
              help="Requests queued per model version before answering 503.")
@click.option("--no-batching", is_flag=True, help="Run every request alone (no dynamic batching).")
@click.option("--token", envvar="DLKIT_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every endpoint but health.")
@click.option("--max-request-bytes", type=click.IntRange(1), default=32 * 1024 * 1024, show_default=True,
              help="Largest request body (also after decompression); larger ones get 413.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
              help="onnxruntime intra-op threads per model; raise it for large models on many cores.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One JSON line per request on stderr.")
@click.option("--max-inflight-bytes", type=click.IntRange(1), default=128 * 1024 * 1024, show_default=True,
              help="Bytes of all request bodies being received at once; beyond it, 503.")
@click.option("--max-connections", type=click.IntRange(1), default=1000, show_default=True,
              help="Open connections before new requests get 503.")
@click.option("--header-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds a connection may take to send its request headers.")
@click.option("--body-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds a request body may take to arrive (408 beyond).")
@click.option("--model-control-mode", type=click.Choice(["none", "explicit", "poll"]), default="none",
              show_default=True,
              help="As Triton's: none (fixed set), explicit (load/unload over the API), poll (follow the repository).")
@click.option("--repository-poll-secs", type=click.FloatRange(0, min_open=True), default=15.0, show_default=True,
              help="Poll mode: seconds between checks of the repository.")
@click.option("--instances", type=click.IntRange(1, 64), default=None,
              help="Copies of each model run in parallel (default: config.pbtxt's instance_group count, else 1).")
@click.option("--third-party-plugins", is_flag=True, envvar="DLKIT_SERVE_PLUGINS", show_envvar=True,
              help="Also load third-party plugins (default: dlkit's built-ins only).")
def serve_cmd(repo, host, port, grpc_port, models, provider, max_batch_size, max_queue_delay_ms, max_queue_size,
              no_batching, token, max_request_bytes, threads, access_log, third_party_plugins, **limits):
    """Serve the repository's ONNX models over the Open Inference Protocol (KServe v2) until Ctrl+C."""
    from dlkit.plugins import get_plugins
    from dlkit.serve import ServeSettings, serve

    get_plugins(builtin_only=not third_party_plugins)  # the server needs no third-party code

    refs = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    r = open_repo(repo)
    serve(ServeSettings(repo=r.root, models=refs, host=host, port=port, grpc_port=grpc_port, token=token,
                        log_access=access_log,
                        provider=provider, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                        max_queue_size=max_queue_size, max_request_bytes=max_request_bytes,
                        batching=not no_batching, threads=threads, **limits))


serve_cmd.builtin_plugins_only = True  # the group does not load plugin commands for it
