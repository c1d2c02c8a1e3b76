#!/usr/bin/env bash
# make run: the gateway with an embedded simulator fleet (no broker needed).
# Extra flags go to `gateway run`, e.g.  make run ARGS="--simulate 2000"
set -euo pipefail
cd "$(dirname "$0")/.."
echo "make run: a gateway with 500 simulated devices (berlin/..., paris/..., madrid/..., rome/...)"
echo "open the URL of the 'listening on' line below; watch it: .venv/bin/gateway tail 'berlin/#'"
echo "stop: Ctrl-C"
# the state survives a restart of `make run` (docs/operations.md, "Restarts")
export GATEWAY_PERSIST_STATE_DIR="${GATEWAY_PERSIST_STATE_DIR:-.state}"
exec .venv/bin/gateway run --simulate 500 ${ARGS:-}
