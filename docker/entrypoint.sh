#!/bin/sh
# The image's entrypoint: make what the jail needs inside a container, drop the capability that
# needed, then exec execbox (which becomes PID 1). docs/security.md, "In a container", says why
# each step is needed and which docker run flags make it possible.
#
#  1. A writable cgroup subtree. Docker mounts the cgroup file systems read-only; in a private
#     cgroup namespace (--cgroupns private) they show only the container's own subtree, which
#     is remounted read-write here. On cgroup v2 the container's processes move to a leaf
#     (/init) first, because a cgroup that has processes cannot hand controllers to children.
#  2. A spare, read-only procfs with nothing mounted over it. Docker masks parts of the
#     container's /proc; the kernel refuses a fresh proc mount inside a user namespace (the
#     jail's) unless some proc in the mount namespace is fully visible. The jail detaches this
#     one with the rest of the container's tree after pivot_root.
#  3. Shrink the bounding set to CAP_SETUID and CAP_SETGID (what the server needs to write the
#     jails' id maps), whatever the container was granted (CAP_SETPCAP is needed for the drop):
#     the server, the spawner and the jails never get anything else back.
#
# Nothing here is fatal: when a step cannot be done (a flag was not given), execbox's own host
# check names the missing layer and refuses to start unless EXECBOX_ALLOW_DEGRADED=1.
set -u

warn() { echo "execbox-entrypoint: $*" >&2; }

private_cgroupns() {
  # In a private cgroup namespace every line of /proc/self/cgroup names the root.
  while IFS=: read -r _ _ path; do
    [ "$path" = / ] || return 1
  done </proc/self/cgroup
}

rw_cgroups() {
  if ! private_cgroupns; then
    warn "not in a private cgroup namespace (docker run --cgroupns private): cgroups left read-only"
    return
  fi
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    mount -o remount,bind,rw /sys/fs/cgroup 2>/dev/null ||
      { warn "cannot remount /sys/fs/cgroup read-write (needs --cap-add SYS_ADMIN)"; return; }
    # No internal processes: move everything in the namespace's root to a leaf.
    mkdir -p /sys/fs/cgroup/init
    while read -r pid; do
      echo "$pid" >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
    done </sys/fs/cgroup/cgroup.procs
  else
    for c in memory pids cpu cpuacct cpu,cpuacct; do
      d=/sys/fs/cgroup/$c
      [ -d "$d" ] && ! [ -L "$d" ] || continue
      mount -o remount,bind,rw "$d" 2>/dev/null ||
        { warn "cannot remount $d read-write (needs --cap-add SYS_ADMIN)"; return; }
    done
  fi
}

spare_proc() {
  mkdir -p /run/execbox-proc
  mount -t proc -o ro,nosuid,nodev,noexec proc /run/execbox-proc 2>/dev/null ||
    warn "cannot mount a spare /proc (needs --cap-add SYS_ADMIN): jails cannot mount theirs"
}

has_cap() { # bit number, in the bounding set
  bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
  [ $(( (0x$bnd >> $1) & 1 )) = 1 ]
}

rw_cgroups
spare_proc
if has_cap 8; then # CAP_SETPCAP: keep only what the server needs, whatever was granted
  exec setpriv --bounding-set -all,+setuid,+setgid --inh-caps -all -- "$@"
fi
if has_cap 21; then # CAP_SYS_ADMIN without CAP_SETPCAP cannot be dropped
  warn "CAP_SYS_ADMIN was given without CAP_SETPCAP, so it cannot be dropped before the" \
    "server starts: add --cap-add SETPCAP (see docs/security.md, 'In a container')"
  exit 1
fi
exec "$@"
