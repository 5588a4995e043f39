#!/usr/bin/env bash
# The local heimdall stack, in the foreground (`make up`); Ctrl-C stops everything.
#
#   heimdall   gRPC ext_authz 127.0.0.1:9001, HTTP side port 127.0.0.1:8080
#   echo       127.0.0.1:8081  (infra/echo/echo.py: answers with the headers it received)
#   Envoy      127.0.0.1:10000 (envoy/envoy.yaml), admin 127.0.0.1:9901
#   Cerbos     gRPC 127.0.0.1:3593, HTTP 127.0.0.1:3592 (infra/cerbos: the document policies)
#   NATS       127.0.0.1:4222 with JetStream, store in .data/nats (business events → attributes)
#
# heimdall runs config/local.yaml. If any of them exits, the others are stopped too.
# CARGO_TARGET_DIR, if set, is where the release build goes (default: target/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/install-tools.sh envoy nats cerbos
cargo build --release

ENVOY="${ROOT}/.tools/bin/envoy"
PYTHON="${PYTHON:-python3}"
HEIMDALL="${CARGO_TARGET_DIR:-target}/release/heimdall"
DATA="${ROOT}/.data"
NATS_STORE="${DATA}/nats"
HEIMDALL_LOG="${DATA}/heimdall.log"
mkdir -p "$NATS_STORE"
: >"$HEIMDALL_LOG"

heimdall_args=(serve --config config/local.yaml)

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
# With LOG=FILE in the environment of the call, the output is also written to FILE.
start() {
  local name="$1"
  shift
  if [[ -n "${LOG:-}" ]]; then
    "$@" > >(tee -a "$LOG" | sed -u "s/^/[${name}] /") 2>&1 &
  else
    "$@" > >(sed -u "s/^/[${name}] /") 2>&1 &
  fi
  pids+=("$!")
}

start nats .tools/bin/nats-server -js -a 127.0.0.1 -p 4222 -sd "$NATS_STORE" -n heimdall-local
start cerbos .tools/bin/cerbos server --config=infra/cerbos/config.yaml
# The development OpenID provider (config/local.yaml's `login`): users alice and bob, any password.
start oidc env OIDC_PORT=9400 OIDC_REDIRECT_URIS=http://127.0.0.1:10000/auth/callback \
  OIDC_POST_LOGOUT_REDIRECT_URIS=http://127.0.0.1:10000/public/index.html \
  node infra/oidc/dev-provider.mjs
# config/local.yaml has the same addresses; the variables make them explicit here.
LOG="$HEIMDALL_LOG" start heimdall env HEIMDALL_BIND=127.0.0.1 CERBOS_GRPC_URL=127.0.0.1:3593 \
  NATS_URL=nats://127.0.0.1:4222 "$HEIMDALL" "${heimdall_args[@]}"
start echo "$PYTHON" infra/echo/echo.py --host 127.0.0.1 --port 8081
start envoy "$ENVOY" -c envoy/envoy.yaml --log-level warn --disable-hot-restart

# Wait (bounded) for Envoy, then for heimdall (it waits for Cerbos and NATS), then say where
# everything is.
# wait_ready URL TENTHS: 0 once URL answers 2xx, 1 after TENTHS tenths of a second without.
wait_ready() {
  local url="$1" tries="$2"
  for _ in $(seq 1 "$tries"); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}
ready=0
heimdall_ready=0
if wait_ready http://127.0.0.1:9901/ready 200; then
  ready=1
  if wait_ready http://127.0.0.1:8080/ready 300; then
    heimdall_ready=1
  fi
fi
token="$(grep -o 'v4\.public\.[A-Za-z0-9_.-]*' "$HEIMDALL_LOG" 2>/dev/null | head -n 1 || true)"
if [[ "$ready" == "1" ]]; then
  cat <<'EOF'

heimdall local stack is up:
  Envoy (entry point)      http://127.0.0.1:10000
  Envoy admin              http://127.0.0.1:9901
  heimdall ext_authz gRPC  127.0.0.1:9001
  heimdall HTTP side port  http://127.0.0.1:8080  (/health, /ready, /metrics, /decision, /.well-known/paseto-keys)
  echo upstream            http://127.0.0.1:8081
  Cerbos PDP               127.0.0.1:3593 (gRPC)  /check and /plan/resources ask it
  NATS (JetStream)         nats://127.0.0.1:4222   store .data/nats (rm -rf .data to start afresh)
  OpenID provider (dev)    http://127.0.0.1:9400   users alice (user, editor) and bob (user), any password

Log in with a browser: open http://127.0.0.1:10000/api/documents/42 (text/html: redirected to
/auth/login, then to the provider; sign in as alice, consent, and you are back with a session
cookie). A JSON client: curl -i http://127.0.0.1:10000/auth/login, follow the Location in a
browser, and the callback answers {"access_token", "token_type", "expires_in", "refresh_token"}.

Try:
  curl -i http://127.0.0.1:10000/healthz                 # answered by Envoy, no check
  curl -i http://127.0.0.1:10000/api/hello               # checked by heimdall: 401 without a token
EOF
  # The demo token heimdall logged (config/local.yaml configures no key).
  printf '\nThe demo token (subject demo-user, role user), from heimdall'"'"'s log:\n  TOKEN=%s\n' \
    "${token:-<the token in the [heimdall] line that says "A demo token">}"
  cat <<'EOF'
  curl -i -H "authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/hello

Principal attributes: publish a business event and the next decision uses it.
  curl -s -o /dev/null -w '%{http_code}\n' -H "authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/reports
      # 403, the enterprise plan is required (unless an earlier run stored one in .data/nats)
  scripts/publish-event.py subscription.updated '{"user_id": "demo-user", "plan": "enterprise"}'
      # {"stream": "BUSINESS_EVENTS", "seq": 1}
  curl -s -H "authorization: Bearer $TOKEN" http://127.0.0.1:10000/api/reports
      # 200; the echo shows x-user-plan: enterprise
  curl -s -o /dev/null -w '%{http_code}\n' -H "authorization: Bearer $TOKEN" 'http://127.0.0.1:10000/api/documents/42?owner=demo-user'
      # 200 from Cerbos: the owner may view (?owner=bob: 403)
  scripts/publish-event.py principal.revoked "{\"user_id\": \"demo-user\", \"not_before\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
      # demo-user's tokens issued before now: 401 (a restarted heimdall logs a new one)
  curl -s http://127.0.0.1:8080/metrics | grep '^heimdall_attributes_'

Ctrl-C stops everything.
EOF
  if [[ "$heimdall_ready" != "1" ]]; then
    echo "up: heimdall is not ready yet: $(curl -s http://127.0.0.1:8080/ready 2>/dev/null || echo 'no answer')" >&2
  fi
else
  echo "up: Envoy did not become ready within 20s (see the [envoy] lines above)" >&2
fi

# Stay in the foreground until one of them exits (or Ctrl-C).
status=0
wait -n "${pids[@]}" || status=$?
echo "up: a process exited (status ${status}); stopping the stack" >&2
exit "$status"
