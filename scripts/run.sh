#!/usr/bin/env bash
# make run: the gateway with an embedded simulator fleet (no broker needed).
# Extra flags go to `gateway run`, e.g.  make run ARGS="--simulate 2000"
set -euo pipefail
cd "$(dirname "$0")/.."
echo "gateway: http://127.0.0.1:8080/  (WebSocket /ws, /api/snapshot), metrics http://127.0.0.1:9108/metrics"
echo "watch it:  .venv/bin/gateway tail 'berlin/#'     stop: Ctrl-C"
# the state survives a restart of `make run` (docs/operations.md, "Restarts")
export GATEWAY_PERSIST_STATE_DIR="${GATEWAY_PERSIST_STATE_DIR:-.state}"
exec .venv/bin/gateway run --simulate 500 ${ARGS:-}
