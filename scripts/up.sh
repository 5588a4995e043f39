#!/usr/bin/env bash
# The local heimdall stack, in the foreground (`make up`); Ctrl-C stops everything.
#
#   heimdall   gRPC ext_authz 127.0.0.1:9001, HTTP side port 127.0.0.1:8080
#   echo       127.0.0.1:8081  (infra/echo/echo.py: answers with the headers it received)
#   Envoy      127.0.0.1:10000 (envoy/envoy.yaml), admin 127.0.0.1:9901
#   Cerbos     gRPC 127.0.0.1:3593, HTTP 127.0.0.1:3592 (infra/cerbos: the document policies)
#
# If any of them exits, the others are stopped too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/install-tools.sh envoy cerbos
cargo build --release

ENVOY="${ROOT}/.tools/bin/envoy"
PYTHON="${PYTHON:-python3}"

heimdall_args=(serve)
if [[ -f config/heimdall.yaml ]]; then
  heimdall_args+=(--config config/heimdall.yaml)
fi

pids=()
stopping=0

# shellcheck disable=SC2317  # called from the traps below
stop_all() {
  [[ "$stopping" == "1" ]] && return
  stopping=1
  trap - INT TERM
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  # Give them a moment to exit cleanly, then make sure.
  for _ in $(seq 1 30); do
    local alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ "$alive" == "0" ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

# start NAME CMD...: runs CMD in the background with its output prefixed by [NAME].
start() {
  local name="$1"
  shift
  "$@" > >(sed -u "s/^/[${name}] /") 2>&1 &
  pids+=("$!")
}

start cerbos .tools/bin/cerbos server --config=infra/cerbos/config.yaml
start heimdall env HEIMDALL_BIND=127.0.0.1 CERBOS_GRPC_URL=127.0.0.1:3593 target/release/heimdall "${heimdall_args[@]}"
start echo "$PYTHON" infra/echo/echo.py --host 127.0.0.1 --port 8081
start envoy "$ENVOY" -c envoy/envoy.yaml --log-level warn --disable-hot-restart

# Wait (bounded) for Envoy to report ready, then say where everything is.
ready=0
for _ in $(seq 1 200); do
  if curl -fsS -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ "$ready" == "1" ]]; then
  cat <<'EOF'

heimdall local stack is up:
  Envoy (entry point)      http://127.0.0.1:10000
  Envoy admin              http://127.0.0.1:9901
  heimdall ext_authz gRPC  127.0.0.1:9001
  heimdall HTTP side port  http://127.0.0.1:8080  (/health, /ready, /metrics, /decision, /.well-known/paseto-keys)
  echo upstream            http://127.0.0.1:8081
  Cerbos PDP               127.0.0.1:3593 (gRPC)  /check and /plan/resources ask it

Try:
  curl -i http://127.0.0.1:10000/healthz                 # answered by Envoy, no check
  curl -i http://127.0.0.1:10000/api/hello               # checked by heimdall
  curl -i -H 'authorization: Bearer v4.public....' http://127.0.0.1:10000/api/hello

Ctrl-C stops everything.
EOF
else
  echo "up: Envoy did not become ready within 20s (see the [envoy] lines above)" >&2
fi

# Stay in the foreground until one of them exits (or Ctrl-C).
status=0
wait -n "${pids[@]}" || status=$?
echo "up: a process exited (status ${status}); stopping the stack" >&2
exit "$status"
