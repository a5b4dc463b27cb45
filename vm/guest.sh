#!/usr/bin/env bash
# Stage 2 of the VM, pid 1 after switch_root: a cgroup v2-only host like a systemd one (the
# service's processes in a leaf cgroup, nothing enabled for execbox beforehand), then the real
# execbox binary: `check`, then every case of /results/cases.tsv through `execbox run`. Each
# case leaves <name>.json (the record), <name>.stderr and <name>.meta.json (exit code, OOM kills
# the kernel counted below execbox's cgroup during the run, what was left behind) in /results.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
export HOME=/root LANG=C.UTF-8
R=/results

finish() {
  sync
  echo o > /proc/sysrq-trigger
  sleep 30
}
trap finish EXIT

mount -t tmpfs -o mode=755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
# Like systemd: no process in the root cgroup but the kernel's; ours go into a leaf.
mkdir /sys/fs/cgroup/vm-init
echo $$ > /sys/fs/cgroup/vm-init/cgroup.procs

EXECBOX="/repo/$(cat $R/execbox-path)"
{
  echo "uptime at stage 2 (s): $(cut -d' ' -f1 /proc/uptime)"
  echo "kernel $(uname -r)"
  echo "cmdline $(cat /proc/cmdline)"
  echo "controllers $(cat /sys/fs/cgroup/cgroup.controllers)"
  echo "root subtree_control before execbox: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
  grep -c . /proc/self/mountinfo | sed 's/^/mounts /'
  grep ' cgroup' /proc/self/mountinfo
  echo "lsm $(cat /sys/kernel/security/lsm 2>/dev/null || echo '?')"
} > $R/guest-env.txt 2>&1

"$EXECBOX" check --json > $R/check.json 2> $R/check.stderr
echo $? > $R/check.rc
"$EXECBOX" check > $R/check.txt 2>&1

# Helpers use bash builtins only: under emulation every fork costs tens of milliseconds, and the
# sampler must not steal the CPU from the case it watches.

# value of `key` in a flat-keyed file (memory.events, cpu.stat, pids.events)
key() {
  local k v
  while read -r k v; do
    [ "$k" = "$2" ] && { echo "$v"; return; }
  done < "$1" 2>/dev/null
  echo 0
}

oom_kills() {
  key /sys/fs/cgroup/execbox/memory.events oom_kill
}

# Host uids of runs are 2000000000 + slot.
leftover_procs() {
  local f k uid
  for f in /proc/[0-9]*/status; do
    while read -r k uid _; do
      if [ "$k" = "Uid:" ]; then
        [ "$uid" -ge 2000000000 ] && printf '"%s" ' "${f#/proc/}"
        break
      fi
    done < "$f" 2>/dev/null
  done
}

leftover_cgroups() {
  local d
  for d in /sys/fs/cgroup/execbox/*/; do
    [ -d "$d" ] && printf '"%s" ' "${d%/}"
  done
}

json_list() { # words → JSON list
  local s="$*"
  echo "[${s//\" \"/\", \"}]"
}

# While a case runs: what the kernel shows in its run cgroup (limits as written, throttled CPU
# periods, forks refused at pids.max), a line per look.
sample() {
  local d mem swap pids cpu procs n
  while :; do
    for d in /sys/fs/cgroup/execbox/j*/; do
      [ -f "$d/cpu.stat" ] || continue
      read -r mem < "$d/memory.max"
      read -r swap < "$d/memory.swap.max"
      read -r pids < "$d/pids.max"
      read -r cpu < "$d/cpu.max"
      n=0
      while read -r _; do n=$((n + 1)); done < "$d/cgroup.procs"
      echo "memory.max=$mem memory.swap.max=$swap pids.max=$pids cpu.max=${cpu/ //}" \
        "nr_throttled=$(key "$d/cpu.stat" nr_throttled)" \
        "pids_events_max=$(key "$d/pids.events" max) procs=$n"
    done 2>/dev/null >> "$1"
    sleep 0.2
  done
}

if [ -f $R/cases.tsv ]; then
  while IFS=$'\t' read -r -a f; do
    [ ${#f[@]} -ge 2 ] || continue
    name="${f[0]}" fixture="${f[1]}"
    args=("${f[@]:2}")
    before=$(oom_kills)
    sample "$R/$name.samples" &
    sampler=$!
    t0=$(date +%s%N)
    timeout -s KILL 600 "$EXECBOX" run "${args[@]}" "/repo/$fixture" \
      > "$R/$name.json" 2> "$R/$name.stderr" < /dev/null
    rc=$?
    t1=$(date +%s%N)
    kill $sampler; wait $sampler 2>/dev/null
    after=$(oom_kills)
    cat > "$R/$name.meta.json" <<EOF
{"rc": $rc, "oom_kill_before": ${before:-0}, "oom_kill_after": ${after:-0},
 "seconds": $(( (t1 - t0) / 1000000 ))e-3,
 "leftover_procs": $(json_list $(leftover_procs)),
 "leftover_cgroups": $(json_list $(leftover_cgroups))}
EOF
    echo "vm-case $name rc=$rc" > /dev/console
  done < $R/cases.tsv
fi

# The warm path under cgroup v2: `execbox serve` (built-in Python only), its templates, one run
# from each (bare, and with numpy and pandas); then it stops and final.json checks that nothing
# is left.
if [ -f $R/warm.on ]; then
  ip link set lo up 2>/dev/null
  EXECBOX_RUNTIMES_DIR=/nonexistent "$EXECBOX" serve --insecure-no-auth --log-json \
    --listen 127.0.0.1:8080 --private-listen 127.0.0.1:9090 > $R/warm-serve.log 2>&1 &
  srv=$!
  for _ in $(seq 600); do
    curl -s -m 5 127.0.0.1:9090/metrics | grep -q '^execbox_warm{what="templates_ready"} 2' && break
    sleep 0.5
  done
  curl -s -m 5 127.0.0.1:9090/metrics | grep '^execbox_warm' > $R/warm-metrics-before.txt
  post() {
    curl -s -m 300 -X POST 127.0.0.1:8080/v1/runs -H 'content-type: application/json' -d "$1"
  }
  post '{"language":"python","mode":"main","files":[{"name":"main.py","content":"import os\ndef main():\n    return {\"pid\": os.getpid(), \"cgroup\": open(\"/proc/self/cgroup\").read(), \"uid\": os.getuid()}\n"}]}' > $R/warm-hello.json
  post '{"language":"python","mode":"main","files":[{"name":"main.py","content":"import pandas as pd\ndef main():\n    return int(pd.Series([1, 2, 3]).sum())\n"}]}' > $R/warm-pandas.json
  # The main-mode hostile cases, through the template's children (bodies written by vm.rs).
  while read -r name; do
    [ -n "$name" ] || continue
    curl -s -m 300 -X POST 127.0.0.1:8080/v1/runs -H 'content-type: application/json' \
      --data-binary @$R/warm-case-$name.req.json > $R/warm-case-$name.json
    echo "vm-case warm $name" > /dev/console
  done < $R/warm-cases.txt
  kill -TERM $srv
  wait $srv
  echo "vm-case warm rc=$?" > /dev/console
fi

cat > $R/final.json <<EOF
{"leftover_procs": $(json_list $(leftover_procs)),
 "leftover_cgroups": $(json_list $(leftover_cgroups)),
 "execbox_parent_exists": $([ -d /sys/fs/cgroup/execbox ] && echo true || echo false),
 "root_subtree_control": "$(cat /sys/fs/cgroup/cgroup.subtree_control)",
 "execbox_subtree_control": "$(cat /sys/fs/cgroup/execbox/cgroup.subtree_control 2>/dev/null)"}
EOF
echo ok > $R/done
