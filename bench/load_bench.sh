#!/usr/bin/env bash
# HTTP load benchmark: `execbox serve` against the reference peer (Flask + nsjail under
# gunicorn), closed-loop wrk load through the peer's load.sh, on loopback only.
# See bench/README.md, "Load benchmark".
#
#   bench/load_bench.sh
#   PAYLOADS=hello CONCURRENCY=4,64,256 PEER=0 BASELINE=0 bench/load_bench.sh   # overload cells
#
# Env: DURATION (15) measured seconds per cell and service; WARMUP (3) seconds of unrecorded
#      load first; PAYLOADS (hello,pandas); CONCURRENCY (1,4,16); TIMEOUT (60s, wrk's
#      per-request timeout); EXECBOX_PORT (8081, the public listener); EXECBOX_PRIVATE_PORT
#      (9091, /readyz and /metrics; execbox's default 9090 is often taken by tests); PORT (8090, the peer's);
#      EXECBOX_BIN (use this binary, skip the cargo build);
#      EXECBOX_QUOTA_ARGS (more `serve` arguments for per-user quotas; default none: execbox
#      has no per-user cap unless told, see below); EXECBOX_ARGS (more `serve` arguments);
#      PEER (1; 0: measure execbox alone, the peer is not started: for the overload cells);
#      GOODPUT_TARGET (0.7: each cell's goodput, its 200s per second, against the best of the
#      payload in this run);
#      PEER_DIR (/work/shared/peer); DRAIN (1: before each measured run, wait until the
#      service has finished the runs that wrk's warm-up abandoned; 0: load.sh's own warm-up,
#      no waiting, which shows what abandoned runs do); BASELINE (1: time `import pandas`
#      in both Python envs first).
# execbox runs with its defaults (admission: max-running = cores, max-queued = 8 x cores;
# pool; limits) and authentication on: a throwaway APP_JWT_SECRET and a token for one user,
# sent on every request.  All load comes from that one user; execbox sets no per-user quota
# by default (builds before that had 20 req/s and 4 runs at once, which measured the quota, not
# the service: give those EXECBOX_QUOTA_ARGS="--quota-rps 1000000 --quota-burst 1000000
# --quota-concurrent 100000 --quota-cpu-seconds 1000000000").
# Prints a table and writes bench/results/load-<timestamp>.json (+ execbox's log next to it).
# Needs root (both services jail their runs).  Stops both services on exit.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
PEER_DIR="${PEER_DIR:-/work/shared/peer}"
EXECBOX_PORT="${EXECBOX_PORT:-8081}"
EXECBOX_PRIVATE_PORT="${EXECBOX_PRIVATE_PORT:-9091}"
EXECBOX_QUOTA_ARGS="${EXECBOX_QUOTA_ARGS-}"
PEER="${PEER:-1}"
export PEER
PEER_PORT="${PORT:-8090}"
RESULTS="$HERE/results"
STAMP="$(date -u +%Y%m%d-%H%M%S)"
EXECBOX_LOG="$RESULTS/load-$STAMP-execbox.log"
OUT="$RESULTS/load-$STAMP.json"

log() { echo "[load_bench] $*" >&2; }
die() { echo "[load_bench] error: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "needs root (both services create namespaces and cgroups)"
[[ -x "$PEER_DIR/load.sh" ]] || die "no load.sh in $PEER_DIR"
[[ "$PEER" == 0 || -x "$PEER_DIR/run_peer.sh" ]] || die "no peer in $PEER_DIR"
mkdir -p "$RESULTS"

# 1. wrk and curl (Debian packages).
for p in wrk curl; do
  if ! command -v "$p" >/dev/null; then
    log "installing $p"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "$p" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq "$p" >/dev/null; }
  fi
done
PY="$(command -v python3)" || die "python3 missing"

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# 2. The runtime env (`make runtime` creates it) and execbox, release build.
if [[ ! -x "${EXECBOX_PYTHON_ENV:-/opt/execbox/python}/bin/python3" ]]; then
  log "no Python env at ${EXECBOX_PYTHON_ENV:-/opt/execbox/python}: make runtime"
  make -C "$REPO" runtime >&2 || die "make runtime failed"
fi
PREBUILT=""
[[ -n "${EXECBOX_BIN:-}" ]] && PREBUILT=" (EXECBOX_BIN=$EXECBOX_BIN, not built from this tree)"
if [[ -z "${EXECBOX_BIN:-}" ]]; then
  log "cargo build --release -p execbox-cli -p execbox-jail"
  (cd "$REPO" && cargo build --release -p execbox-cli -p execbox-jail) || die "cargo build failed"
  EXECBOX_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/execbox"
fi
[[ -x "$EXECBOX_BIN" ]] || die "$EXECBOX_BIN is not executable"
"$EXECBOX_BIN" serve --help >/dev/null 2>&1 || die "$EXECBOX_BIN has no 'serve' subcommand (stale build?)"

EXECBOX_PID=""
PEER_STARTED=0
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$EXECBOX_PID" ]] && kill -0 "$EXECBOX_PID" 2>/dev/null; then
    log "stopping execbox serve (pid $EXECBOX_PID)"
    kill -TERM "$EXECBOX_PID" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$EXECBOX_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$EXECBOX_PID" 2>/dev/null; then
      log "execbox serve ignored SIGTERM for 20 s: SIGKILL"
      kill -KILL "$EXECBOX_PID" 2>/dev/null || true
    fi
    wait "$EXECBOX_PID" 2>/dev/null || true
  fi
  if (( PEER_STARTED )); then
    log "stopping the peer"
    PORT="$PEER_PORT" "$PEER_DIR/run_peer.sh" stop >&2 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 3. execbox serve on loopback, authentication on, its defaults otherwise.
port_busy "$EXECBOX_PORT" && die "127.0.0.1:$EXECBOX_PORT is in use (set EXECBOX_PORT)"
port_busy "$EXECBOX_PRIVATE_PORT" && die "127.0.0.1:$EXECBOX_PRIVATE_PORT is in use (set EXECBOX_PRIVATE_PORT)"
APP_JWT_SECRET="$(head -c 32 /dev/urandom | base64)"
export APP_JWT_SECRET
EXECBOX_TOKEN="$("$EXECBOX_BIN" token --user-id load-bench --ttl 4h)" || die "execbox token failed"
export EXECBOX_TOKEN
SERVE_ARGS=(serve --listen "127.0.0.1:$EXECBOX_PORT" --private-listen "127.0.0.1:$EXECBOX_PRIVATE_PORT")
# shellcheck disable=SC2206
SERVE_ARGS+=($EXECBOX_QUOTA_ARGS ${EXECBOX_ARGS:-})
"$EXECBOX_BIN" "${SERVE_ARGS[@]}" >"$EXECBOX_LOG" 2>&1 &
EXECBOX_PID=$!
unset APP_JWT_SECRET
log "execbox ${SERVE_ARGS[*]}: pid $EXECBOX_PID, log $EXECBOX_LOG"
ready=0
for _ in $(seq 300); do
  kill -0 "$EXECBOX_PID" 2>/dev/null || { tail -20 "$EXECBOX_LOG" >&2; die "execbox serve exited during start-up"; }
  if [[ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$EXECBOX_PRIVATE_PORT/readyz")" == 200 ]]; then
    ready=1; break
  fi
  sleep 0.1
done
(( ready )) || { tail -20 "$EXECBOX_LOG" >&2; die "execbox /readyz not 200 after 30 s"; }
log "execbox ready: $(curl -s "http://127.0.0.1:$EXECBOX_PRIVATE_PORT/readyz")"
# The warm path (on unless EXECBOX_ARGS has `--warm false`): wait for the template, so the
# measured load meets the steady state, not the start-up's cold fallbacks.
if [[ " ${EXECBOX_ARGS:-} " != *" --warm false "* ]]; then
  warm=0
  for _ in $(seq 600); do
    if curl -s "http://127.0.0.1:$EXECBOX_PRIVATE_PORT/metrics" | grep -q '^execbox_warm{what="templates_ready"} [1-9]'; then
      warm=1; break
    fi
    sleep 0.1
  done
  (( warm )) || log "warning: no warm template ready after 60 s; runs take the cold path"
  log "warm template ready"
fi

# 4. The peer (installs its venv on first use), unless PEER=0.
if [[ "$PEER" == 0 ]]; then
  log "PEER=0: measuring execbox alone"
else
  if [[ -f "$PEER_DIR/.peer.pid" ]] && kill -0 "$(cat "$PEER_DIR/.peer.pid")" 2>/dev/null; then
    die "a peer is already running (pid $(cat "$PEER_DIR/.peer.pid")); stop it with $PEER_DIR/run_peer.sh stop"
  fi
  port_busy "$PEER_PORT" && die "127.0.0.1:$PEER_PORT is in use (set PORT)"
  PEER_STARTED=1
  PORT="$PEER_PORT" "$PEER_DIR/run_peer.sh" >&2
  [[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PEER_PORT/health")" == 200 ]] \
    || die "the peer does not answer on 127.0.0.1:$PEER_PORT/health (see $PEER_DIR/peer.log)"
fi

# 5. The matrix, the table, the JSON.
GIT_REV="$(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown)$PREBUILT"
"$PY" "$HERE/load_bench.py" \
  --execbox-url "http://127.0.0.1:$EXECBOX_PORT" --execbox-pid "$EXECBOX_PID" \
  --execbox-private-url "http://127.0.0.1:$EXECBOX_PRIVATE_PORT" \
  --execbox-args "${SERVE_ARGS[*]}" \
  --execbox-log "$EXECBOX_LOG" --execbox-rev "$GIT_REV" \
  --peer-url "http://127.0.0.1:$PEER_PORT" --peer-dir "$PEER_DIR" \
  --out "$OUT"
