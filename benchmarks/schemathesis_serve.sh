#!/bin/sh
# Open Inference Protocol conformance of `dlkit serve`'s REST API against its own OpenAPI document,
# with schemathesis in a venv of its own (never a dlkit dependency). Bounded: 25 examples per
# operation, about 25 s on 2 cores. Usage: benchmarks/schemathesis_serve.sh MODEL_REPOSITORY
set -eu
REPO=${1:?usage: $0 MODEL_REPOSITORY}
VENV=/tmp/dlkit-schemathesis
[ -x $VENV/bin/st ] || { python3 -m venv $VENV && $VENV/bin/pip install --quiet schemathesis; }
PORT=18777
.venv/bin/dlkit serve --repo "$REPO" --port $PORT --grpc-port 0 --no-access-log &
SERVER=$!
trap 'kill $SERVER' EXIT
for _ in $(seq 60); do curl -sf http://127.0.0.1:$PORT/v2/health/ready >/dev/null && break; sleep 1; done
$VENV/bin/st run http://127.0.0.1:$PORT/openapi.json --max-examples 25 --seed 1
