#!/usr/bin/env bash
# What Redis costs and what the multi-replica stack gives, on this machine (docs/architecture.md
# quotes one run). Two measurements, both on loopback only:
#
#  1. Latency: N sequential /execute hello runs (one keep-alive connection) against one
#     `execbox serve`, with run state and quotas in memory, then with --redis-url (a
#     redis-server this script starts on a loopback port). Quotas are on in both, raised out of
#     reach (EXECBOX_QUOTA_*), so each run does what it does in production: the quota
#     check-and-take, the record written queued and final, the place given back.
#  2. Throughput: C concurrent clients for SECS seconds of /execute hello, against one
#     `execbox serve` (memory, the single-node deployment) and against the compose stack
#     (three replicas on Redis behind nginx, over HTTPS), on the same machine.
#
#   bench/redis_bench.sh                       # N=200 C=8 SECS=20
#   N=100 C=4 SECS=10 STACK=0 bench/redis_bench.sh
#
# Env: N (200), C (8), SECS (20), STACK (1: also measure the stack; needs `make stack-images`),
#      EXECBOX_BIN (skip the cargo build), PORT (8181), PRIVATE_PORT (9191), REDIS_PORT (16379).
# Needs root (jails). Prints one JSON object per measurement and a summary.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
N="${N:-200}" C="${C:-8}" SECS="${SECS:-20}" STACK="${STACK:-1}"
PORT="${PORT:-8181}" PRIVATE_PORT="${PRIVATE_PORT:-9191}" REDIS_PORT="${REDIS_PORT:-16379}"
log() { echo "[redis_bench] $*" >&2; }
[[ "$(id -u)" == 0 ]] || { log "needs root"; exit 1; }

if [[ -z "${EXECBOX_BIN:-}" ]]; then
  (cd "$REPO" && cargo build -q --release -p execbox-cli)
  EXECBOX_BIN="$REPO/target/release/execbox"
fi
if [[ ! -x /usr/bin/redis-check-rdb && ! -x /usr/bin/redis-server ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-tools >/dev/null
fi
REDIS_BIN=/usr/bin/redis-server; [[ -x $REDIS_BIN ]] || REDIS_BIN=/usr/bin/redis-check-rdb
export APP_JWT_SECRET="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
TOKEN="$("$EXECBOX_BIN" token --user-id redis-bench --ttl 4h)"
export EXECBOX_QUOTA_RPS=1000000 EXECBOX_QUOTA_BURST=1000000 EXECBOX_QUOTA_CONCURRENT=100000 \
       EXECBOX_QUOTA_CPU_SECONDS=1000000000
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# redis-check-rdb is redis-server when its argv[0] says so (Debian's redis-tools).
(exec -a redis-server "$REDIS_BIN" --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no >/dev/null 2>&1) &
PIDS+=($!)

serve() {  # serve [args...]: start execbox serve, wait for /readyz
  "$EXECBOX_BIN" serve --listen "127.0.0.1:$PORT" --private-listen "127.0.0.1:$PRIVATE_PORT" "$@" \
    >/tmp/redis-bench-serve.log 2>&1 &
  SERVE_PID=$!
  for _ in $(seq 120); do
    [[ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PRIVATE_PORT/readyz")" == 200 ]] && return
    sleep 0.5
  done
  tail -20 /tmp/redis-bench-serve.log >&2; exit 1
}
stop() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; }
PY="${PYTHON:-python3}"
URL="http://127.0.0.1:$PORT"

serve;                                                    mem_lat="$($PY "$HERE/redis_bench.py" latency "$URL" "$TOKEN" "$N")";  stop
serve --redis-url "redis://127.0.0.1:$REDIS_PORT/0";      red_lat="$($PY "$HERE/redis_bench.py" latency "$URL" "$TOKEN" "$N")";  stop
echo "{\"latency_memory\": $mem_lat}"; echo "{\"latency_redis\": $red_lat}"
serve;                                                    one_tp="$($PY "$HERE/redis_bench.py" throughput "$URL" "$TOKEN" "$C" "$SECS")"; stop
echo "{\"throughput_one_process\": $one_tp}"

if [[ "$STACK" == 1 ]]; then
  tls="$(mktemp -d)"; PROJECT="execbox-bench-$$"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=execbox.test \
    -keyout "$tls/key.pem" -out "$tls/cert.pem" 2>/dev/null
  export REDIS_PASSWORD="bench-$$" EXECBOX_LB_TLS_DIR="$tls" EXECBOX_LB_ADDR=127.0.0.1 EXECBOX_LB_PORT=0
  export EXECBOX_QUOTA_CONCURRENT=100000
  comp() { "$REPO/deploy/compose/compose.sh" -p "$PROJECT" -f "$REPO/deploy/compose/compose.yaml" "$@"; }
  comp up -d --wait --wait-timeout 300 >&2
  trap 'comp down -v --timeout 5 >/dev/null 2>&1; rm -rf "$tls"; cleanup' EXIT
  LB="https://$(comp port lb 443)"
  stack_tp="$($PY "$HERE/redis_bench.py" throughput "$LB" "$TOKEN" "$C" "$SECS" "$tls/cert.pem")"
  echo "{\"throughput_stack\": $stack_tp}"
fi

$PY - "$mem_lat" "$red_lat" "$one_tp" "${stack_tp:-null}" <<'PYEOF'
import json, sys
m, r, one, stack = (json.loads(a) for a in sys.argv[1:])
print(f"p50 /execute hello: memory {m['p50_ms']} ms, redis {r['p50_ms']} ms "
      f"(+{r['p50_ms'] - m['p50_ms']:.2f} ms, x{r['p50_ms'] / m['p50_ms']:.3f})")
print(f"throughput: one process {one['runs_per_s']} runs/s", end="")
if stack:
    print(f", stack (3 replicas + Redis + nginx/TLS) {stack['runs_per_s']} runs/s "
          f"(x{stack['runs_per_s'] / one['runs_per_s']:.2f})")
else:
    print()
PYEOF
