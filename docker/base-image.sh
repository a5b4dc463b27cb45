#!/bin/bash
# Build the base image the Dockerfile's FROM names (debian:bookworm-slim by default) from Debian
# packages, for machines without a container registry: debootstrap a minbase bookworm root file
# system, trim it the way the official -slim image is trimmed (no docs, man pages, locales, apt
# lists or package caches; dpkg told to keep it so), and `docker import` it under that tag.
#
# Idempotent: when the tag already exists nothing is done (pass --force to rebuild). A user
# with a registry never needs this: `docker build` pulls the official image instead.
#
# Usage: docker/base-image.sh [--force] [TAG]   (root; installs debootstrap when missing)
set -euo pipefail

force=0
if [ "${1:-}" = --force ]; then force=1; shift; fi
TAG="${1:-debian:bookworm-slim}"
SUITE="${EXECBOX_BASE_SUITE:-bookworm}"
MIRROR="${EXECBOX_BASE_MIRROR:-http://deb.debian.org/debian}"

if [ "$force" = 0 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG present (docker/base-image.sh --force rebuilds it)"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "docker/base-image.sh: debootstrap needs root" >&2; exit 1; }
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi

work="$(mktemp -d /var/tmp/execbox-base.XXXXXX)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
echo "debootstrap --variant=minbase $SUITE (about a minute and a half on 2 cores)"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}

# What the official slim image does (debuerreotype's slimify): dpkg excludes for docs and
# translations, so packages installed later in the Dockerfile stay slim too.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
CFG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
find "$root/usr/share/doc" -mindepth 2 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{info,lintian,linda,man,groff}/* \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
  "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/* \
  "$root"/tmp/* "$root"/var/tmp/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# The image gets its own /etc/hostname, /etc/hosts and /etc/resolv.conf from the engine.
: >"$root/etc/hostname"
rm -f "$root/etc/resolv.conf"

tar -C "$root" --numeric-owner -c . |
  docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $SUITE" - "$TAG" >/dev/null
echo "imported $TAG: $(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
