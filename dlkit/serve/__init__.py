"""``dlkit serve``: an Open Inference Protocol (KServe v2) server over onnxruntime with dynamic batching.

Modules: ``protocol`` (v2 JSON and Triton's binary tensor extension), ``batcher`` (dynamic
batching), ``metrics`` (Prometheus text), ``models`` (what is served), ``app`` (the FastAPI
app) and ``server`` (uvicorn). Nothing here imports torch.
"""

from .app import create_app
from .server import bind_warning, serve

__all__ = ["create_app", "serve", "bind_warning"]
