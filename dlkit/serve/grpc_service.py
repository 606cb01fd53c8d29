"""The gRPC transport: KServe v2's ``inference.GRPCInferenceService`` on grpcio, routed to the data plane.

It runs on the same event loop as the REST app (grpc.aio), so both share the batchers, metrics
and readiness of one :class:`~dlkit.serve.dataplane.DataPlane`. A gRPC request is turned into
the decoded v2 document the REST parser validates (``raw_input_contents`` become the binary
tail, typed ``contents`` the JSON ``data``), so both transports check inputs the same way.
Imported only when ``--grpc-port`` is on.
"""

from __future__ import annotations

import hmac
import logging

import grpc
import numpy as np
from google.protobuf import json_format

from .dataplane import DataPlane
from .model_set import NotLoaded
from .proto import kserve_v2_pb2 as pb
from .protocol import NUMPY_TO_V2, ProtocolError, parse_infer_doc, tensor_bytes

SERVICE = "inference.GRPCInferenceService"  # the spec's name: what clients call
STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
          404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED,
          409: grpc.StatusCode.FAILED_PRECONDITION,
          413: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
          503: grpc.StatusCode.UNAVAILABLE}
# Which InferTensorContents field holds each datatype (FP16 and BF16 travel only as raw bytes).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
UNAUTHENTICATED_OK = frozenset({"ServerLive", "ServerReady"})  # like /v2/health/* over REST
log = logging.getLogger("dlkit.serve")


class InferenceServicer:
    """One method per RPC; each returns a response message or raises a ProtocolError."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready())

    async def ModelReady(self, request, context):
        try:
            self.plane.model_ready(request.name, request.version or None)
        except ProtocolError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(self.plane.server_metadata(), pb.ServerMetadataResponse())

    async def ModelMetadata(self, request, context):
        meta = self.plane.model_metadata(request.name, request.version or None)
        return json_format.ParseDict(meta, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    async def ModelConfig(self, request, context):
        config = self.plane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig(),
                                                                   ignore_unknown_fields=True))

    async def ModelStatistics(self, request, context):
        stats = self.plane.statistics(request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request, context):
        entries = self.plane.control.index(request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**e) for e in entries])

    async def RepositoryModelLoad(self, request, context):
        params = {k: _param(v) for k, v in request.parameters.items()}
        await self.plane.control.load(request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self.plane.control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request, context):
        model = self.plane.model(request.model_name, request.model_version or None)

        async def receive():
            doc, tail = request_doc(request)
            return parse_infer_doc(doc, tail, model.inputs, model.outputs, model.max_batch_size)

        def encode(req, outputs):
            return infer_response(model.name, model.version, req, outputs)

        return await self.plane.infer(model, receive, encode)


def request_doc(request) -> tuple[dict, bytes]:
    """A ModelInferRequest as the decoded v2 document and binary tail the REST parser takes."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        entry: dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(f"input {tensor.name!r}: both contents and raw_input_contents")
            entry["parameters"] = {"binary_data_size": len(raw[i])}
        elif tensor.datatype in CONTENTS:
            entry["data"] = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
        inputs.append(entry)
    outputs = []
    for out in request.outputs:
        params = {k: _param(v) for k, v in out.parameters.items()}
        outputs.append({"name": out.name, "parameters": {"binary_data": True, **params}})
    doc = {"inputs": inputs, "id": request.id or None}
    if outputs:
        doc["outputs"] = outputs
    else:
        doc["parameters"] = {"binary_data_output": True}  # raw outputs, as Triton answers gRPC
    return doc, b"".join(raw)


def _param(value) -> object:
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def infer_response(name: str, version: int, req, outputs: dict[str, np.ndarray]):
    """The ModelInferResponse: raw_output_contents for binary outputs, typed contents otherwise."""
    response = pb.ModelInferResponse(model_name=name, model_version=str(version), id=req.id or "")
    for want in req.outputs:
        array = outputs[want.name]
        datatype = NUMPY_TO_V2[array.dtype.name]
        tensor = response.outputs.add(name=want.name, datatype=datatype, shape=array.shape)
        if want.binary:
            response.raw_output_contents.append(tensor_bytes(array))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(v.encode() if isinstance(v, str) else bytes(v) for v in array.ravel())
        else:
            getattr(tensor.contents, CONTENTS[datatype]).extend(array.ravel().tolist())
    return response


def _handler(servicer: InferenceServicer, name: str, token: str | None):
    method = getattr(servicer, name)
    expected = f"bearer {token}".encode() if token else None

    async def call(request, context):
        if expected is not None and name not in UNAUTHENTICATED_OK and not _authorized(context, expected):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "this server requires the metadata 'authorization: Bearer <token>'")
        try:
            return await method(request, context)
        except NotLoaded as exc:  # Triton: a model with no available version is UNAVAILABLE
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ProtocolError as exc:
            await context.abort(STATUS.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))

    return call


def _authorized(context, expected: bytes) -> bool:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            value = value.encode() if isinstance(value, str) else value
            return hmac.compare_digest(value[:7].lower() + value[7:], expected)
    return False


RPCS = {"ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
        "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
        "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
        "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "RepositoryModelLoad": (pb.RepositoryModelLoadRequest, pb.RepositoryModelLoadResponse),
        "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest, pb.RepositoryModelUnloadResponse)}


async def start_grpc(plane: DataPlane, host: str, port: int) -> grpc.aio.Server:
    """Listen on ``host:port`` on the running loop; returns the server (``await server.stop(grace)``)."""
    limit = plane.settings.max_request_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1),
                                      ("grpc.max_concurrent_streams", plane.settings.max_connections)])
    servicer = InferenceServicer(plane)
    handlers = {name: grpc.unary_unary_rpc_method_handler(
        _handler(servicer, name, plane.settings.token), request_deserializer=req.FromString,
        response_serializer=resp.SerializeToString) for name, (req, resp) in RPCS.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server
