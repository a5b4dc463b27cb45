#!/bin/bash
# Run Docker Compose v2 (the stack's compose.yaml needs it: `cgroup: private`, `up --wait`),
# finding it or installing it:
#   1. EXECBOX_COMPOSE, if set (a command, e.g. "docker compose");
#   2. the `docker compose` plugin;
#   3. a `docker-compose` that is v2;
#   4. $PREFIX/compose/docker-compose (default /opt/execbox/compose), installed here when
#      root: Debian 12 ships only Compose v1 (1.29, which cannot set a container's cgroup
#      namespace), so the binary comes from Debian 13's `docker-compose` package (v2, a Go
#      binary needing only libc6 >= 2.34), fetched by apt with a private, throw-away
#      configuration (the host's sources and package database are not touched) and unpacked.
# Usage: deploy/compose/compose.sh [compose arguments...]; `--which` prints the command only.
set -euo pipefail

PREFIX="${PREFIX:-/opt/execbox}"
local_bin="$PREFIX/compose/docker-compose"

is_v2() { "$@" version --short 2>/dev/null | grep -qE '^v?2\.'; }

find_compose() {
  if [ -n "${EXECBOX_COMPOSE:-}" ]; then echo "$EXECBOX_COMPOSE"; return; fi
  if is_v2 docker compose; then echo "docker compose"; return; fi
  if command -v docker-compose >/dev/null && is_v2 docker-compose; then echo docker-compose; return; fi
  if [ -x "$local_bin" ] && is_v2 "$local_bin"; then echo "$local_bin"; return; fi
  return 1
}

install_compose() {
  [ "$(id -u)" = 0 ] || { echo "compose.sh: Docker Compose v2 not found; install it (docker-compose-plugin) or run as root to have it installed" >&2; exit 1; }
  local work; work="$(mktemp -d /var/tmp/execbox-compose.XXXXXX)"
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
  echo "deb ${EXECBOX_COMPOSE_MIRROR:-http://deb.debian.org/debian} trixie main" >"$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
              -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
              -o APT::Sandbox::User=root)
  echo "installing Docker Compose v2 from Debian 13's docker-compose package into $PREFIX/compose" >&2
  apt-get "${opts[@]}" update -qq >&2
  (cd "$work" && apt-get "${opts[@]}" download -qq docker-compose >&2)
  dpkg-deb -x "$work"/docker-compose_*.deb "$work/x"
  mkdir -p "$PREFIX/compose"
  install -m 0755 "$work/x/usr/libexec/docker/cli-plugins/docker-compose" "$local_bin"
}

# The replicas' seccomp profile: Compose reads the file named in `security_opt` relative to
# the directory it runs in, so name it absolutely.
export EXECBOX_SECCOMP="${EXECBOX_SECCOMP:-$(cd "$(dirname "$0")/../.." && pwd)/docker/seccomp.json}"

cmd="$(find_compose)" || { install_compose; cmd="$(find_compose)"; }
if [ "${1:-}" = --which ]; then echo "$cmd"; exit 0; fi
# shellcheck disable=SC2086 # the command may be two words ("docker compose")
exec $cmd "$@"
