"""``dlkit serve``: an Open Inference Protocol (KServe v2) server over onnxruntime with dynamic batching.

Modules: ``settings`` (one typed ServeSettings), ``model_set`` (the versions served),
``dataplane`` (what the server does, transport-neutral), ``protocol`` (v2 JSON and Triton's
binary tensor extension), ``batcher`` (dynamic batching), ``metrics`` (Prometheus text),
``app`` (REST routes) with ``http_io`` (body limits, auth, access log), and ``server``
(uvicorn). Nothing here imports torch.
"""

from .app import create_app
from .server import bind_warning, serve
from .settings import ServeSettings

__all__ = ["create_app", "serve", "bind_warning", "ServeSettings"]
