#!/usr/bin/env python3
"""The matrix of bench/load_bench.sh: execbox serve vs the reference peer under wrk.

Called by load_bench.sh once both services are up; stdlib only.  For every payload and
concurrency it measures both services back to back (alternating which goes first), each
through the peer's load.sh, and prints a table; everything goes to --out as JSON.
See bench/README.md, "Load benchmark".

Env: DURATION (15), WARMUP (3), PAYLOADS (hello,pandas), CONCURRENCY (1,4,16), TIMEOUT (60s),
     DRAIN (1), BASELINE (1), PEER (1; 0 measures execbox alone), GOODPUT_TARGET (0.7),
     EXECBOX_PYTHON_ENV (/opt/execbox/python).

Goodput is the 200 answers per second of a cell; each cell's goodput is also given relative
to the peak: the best goodput of that payload over the cells of this run.
"""
import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

SERVICES = ("execbox", "peer")
# What each payload must answer (checked once per service before measuring).
EXPECTED = {
    "hello": ({"ok": 1}, ""),
    "pandas": ({"sum": 1498500.0, "cols": ["a", "b"]}, "(1000, 2)\n"),
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RUN_FINISHED = re.compile(r'run finished run=(\S+) status="?([a-z_]+)')


def log(msg):
    print(f"[load_bench] {msg}", file=sys.stderr, flush=True)


def env_list(name, default):
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


# ---------------------------------------------------------------- host ---------------------


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait


def busy_pct(a, b):
    (t0, i0), (t1, i1) = a, b
    return None if t1 <= t0 else round(100.0 * (1 - (i1 - i0) / (t1 - t0)), 1)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def host_info():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kb / 1048576, 1),
        "kernel": platform.release(),
    }


# ---------------------------------------------------------------- HTTP ---------------------


def http(method, url, body=None, timeout=60, token=None):
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def execbox_metrics(base):
    """Prometheus text -> {'name{labels}': value}."""
    _, text = http("GET", base + "/metrics", timeout=10)
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#") and "_bucket{" not in line:
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def listen_queue(port):
    """Connections waiting in the accept queue of 127.0.0.1:port (Recv-Q of a LISTEN socket)."""
    p = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
    q = 0
    for line in p.stdout.splitlines():
        f = line.split()
        if len(f) >= 2 and f[1].isdigit():
            q += int(f[1])
    return q


def proc_table():
    """pid -> (ppid, utime+stime+cutime+cstime in clock ticks) for every process."""
    tab = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        f = s.rsplit(")", 1)[1].split()
        # after the comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        tab[int(d)] = (int(f[1]), int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]))
    return tab


def tree_ticks(tab, root):
    """CPU ticks of root and its live descendants, reaped children included (a reaped
    process's time is added to its parent's cutime/cstime, recursively)."""
    kids = {}
    for pid, (ppid, _) in tab.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in tab:
            total += tab[pid][1]
        todo.extend(kids.get(pid, []))
    return total


def cpu_snapshot(roots):
    """Host (total, idle) ticks, each service tree's ticks, this process's children's."""
    tab = proc_table()
    r = os.times()
    return {"host": cpu_times(), "trees": {k: tree_ticks(tab, v) for k, v in roots.items()},
            "self_children": r.children_user + r.children_system, "self": r.user + r.system,
            "t": time.monotonic()}


def cpu_usage(a, b):
    """Cores used between two snapshots: host busy, each tree, the load generator, others."""
    hz = os.sysconf("SC_CLK_TCK")
    secs = b["t"] - a["t"]
    (t0, i0), (t1, i1) = a["host"], b["host"]
    busy = ((t1 - i1) - (t0 - i0)) / hz / secs
    trees = {k: (b["trees"][k] - a["trees"][k]) / hz / secs for k in b["trees"]}
    gen = ((b["self_children"] - a["self_children"]) + (b["self"] - a["self"])) / secs
    out = {"host_busy_cores": round(busy, 3), "loadgen_cores": round(gen, 3),
           **{f"{k}_cores": round(v, 3) for k, v in trees.items()}}
    out["other_cores"] = round(busy - gen - sum(trees.values()), 3)
    out["tree_cpu_s"] = {k: round(v * secs, 3) for k, v in trees.items()}
    return out


def children(pid):
    """Direct children of pid, from /proc/*/stat."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        if int(s.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(d))
    return kids


# ---------------------------------------------------------------- services -----------------


class Service:
    token = None

    def root_pid(self):
        raise NotImplementedError

    def __init__(self, name, base, port):
        self.name, self.base, self.port = name, base, port
        self.url = base + "/execute"

    def busy(self):
        raise NotImplementedError

    def wait_idle(self, limit=180.0):
        """Wait until the service has nothing admitted, queued or running (for `quiet` s).

        wrk closes its connections when its time is up; the runs those requests started go on
        without a client.  Measuring the next run on top of them would charge their cost
        (and, for execbox, their admission places) to it."""
        t0 = time.monotonic()
        quiet_since = None
        while True:
            now = time.monotonic()
            if self.busy():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= self.quiet:
                return round(quiet_since - t0, 2)
            if now - t0 > limit:
                return None
            time.sleep(0.05)


class Execbox(Service):
    quiet = 0.2

    def __init__(self, base, port, private, pid, logfile, token):
        super().__init__("execbox", base, port)
        self.private, self.pid, self.logfile, self.token = private, pid, logfile, token

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except OSError:
            return False

    def root_pid(self):
        return self.pid

    def busy(self):
        m = execbox_metrics(self.private)
        return (m.get("execbox_queue_depth", 0) + m.get("execbox_runs_in_flight", 0) > 0
                or listen_queue(self.port) > 0)


class Peer(Service):
    quiet = 0.5  # a gunicorn worker goes from one abandoned request to the next in ms

    def __init__(self, base, port, peer_dir):
        super().__init__("peer", base, port)
        self.pidfile = os.path.join(peer_dir, ".peer.pid")

    def root_pid(self):
        with open(self.pidfile) as f:
            return int(f.read().strip())

    def busy(self):
        master = self.root_pid()
        # nsjail processes are children of the gunicorn workers.
        if any(children(w) for w in children(master)):
            return True
        return listen_queue(self.port) > 0


# ---------------------------------------------------------------- one measurement ----------


def wrk_json(text):
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON "):])
    return None


def svc_env(svc, **kw):
    """The environment for load.sh / wrk: TOKEN (read by post.lua) only for execbox."""
    env = dict(os.environ, **kw)
    env.pop("TOKEN", None)
    env.pop("OUT", None)
    if svc.token:
        env["TOKEN"] = svc.token
    return env


def warmup(svc, payload_file, conc, secs, timeout, peer_dir):
    """Unrecorded load, the same wrk invocation load.sh makes for its warm-up."""
    env = svc_env(svc, BODY_FILE=payload_file)
    p = subprocess.run(
        ["wrk", "-t1", f"-c{conc}", f"-d{secs}s", "--timeout", timeout,
         "-s", os.path.join(peer_dir, "tools", "post.lua"), svc.url],
        capture_output=True, text=True, env=env)
    return wrk_json(p.stdout)


def load_sh(svc, payload_file, conc, secs, warm, timeout, label, peer_dir):
    env = svc_env(svc, WARMUP=str(warm), TIMEOUT=timeout, LABEL=label, THREADS="1")
    p = subprocess.run([os.path.join(peer_dir, "load.sh"), svc.url, payload_file, str(conc),
                        str(secs)], capture_output=True, text=True, env=env)
    res, probe = None, ""
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
        elif line.startswith("probe:"):
            probe = line[:300]
    if res is None:
        raise RuntimeError(f"load.sh against {svc.name} printed no RESULT line "
                           f"(exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return res, probe


def counts(w):
    """Split wrk's outcome: 2xx, 429, other statuses, socket errors."""
    sc = {int(k): v for k, v in (w.get("status_counts") or {}).items()}
    ok = sum(v for k, v in sc.items() if 200 <= k < 300)
    r429 = sc.get(429, 0)
    other = {str(k): v for k, v in sc.items() if not (200 <= k < 300) and k != 429}
    e = w["errors"]
    sock = {k: e[k] for k in ("connect", "read", "write", "timeout") if e[k]}
    return {"ok_2xx": ok, "s429": r429, "other_status": other,
            "socket_errors": sock,
            "other_total": sum(other.values()) + sum(sock.values())}


def parse_ts(s):
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def execbox_runs(ex, log_from, log_to, t_end, cap=3000):
    """Records of the runs execbox finished in a log range: statuses and where the time went.

    Timings are taken from the ok runs that finished before load.sh returned (answers a
    client could receive); the runs finished later were abandoned by wrk at its end."""
    with open(ex.logfile, "rb") as f:
        f.seek(log_from)
        text = ANSI.sub("", f.read(log_to - log_from).decode("utf-8", "replace"))
    ids, statuses, problems = [], {}, []
    for line in text.splitlines():
        m = RUN_FINISHED.search(line)
        if m:
            ids.append(m.group(1))
            statuses[m.group(2)] = statuses.get(m.group(2), 0) + 1
        elif " WARN " in line or " ERROR " in line:
            problems.append(line.strip()[:400])
    sample = ids if len(ids) <= cap else ids[:: -(-len(ids) // cap)]
    server_ms, steps, missing, late, raw = [], {}, 0, 0, []
    for rid in sample:
        code, body = http("GET", f"{ex.base}/v1/runs/{rid}", timeout=10, token=ex.token)
        if code != 200:
            missing += 1
            continue
        r = json.loads(body)
        st = dict(r.get("timings_us", []))
        raw.append([r.get("created_at"), r.get("finished_at"), r.get("status"),
                    round(st.get("run", 0) / 1000, 1)])
        if r.get("status") != "ok" or not r.get("finished_at"):
            continue
        if parse_ts(r["finished_at"]) > t_end:
            late += 1
            continue
        if r.get("created_at"):
            server_ms.append((parse_ts(r["finished_at"]) - parse_ts(r["created_at"]))
                             .total_seconds() * 1000)
        prep = 0
        for name, us in r.get("timings_us", []):
            steps.setdefault(name, []).append(us / 1000)
            if name not in ("run", "teardown") and not name.startswith("child_"):
                prep += us / 1000  # child_* happen inside jail_init
        steps.setdefault("prep_total", []).append(prep)
    med = {k: round(statistics.median(v), 2) for k, v in steps.items()}
    return {
        "runs": len(ids), "statuses": statuses, "records_read": len(sample) - missing,
        "records_missing": missing, "finished_after_load": late,
        "server_ms_p50": round(pct(server_ms, 50), 1) if server_ms else None,
        "server_ms_p90": round(pct(server_ms, 90), 1) if server_ms else None,
        "step_median_ms": med,
        "log_problems": problems[:20], "log_problem_count": len(problems),
        "raw": {"fields": ["created_at", "finished_at", "status", "run_ms"], "runs": raw},
    }


def metric_delta(before, after):
    keys = [k for k in after if k.startswith(("execbox_runs_total", "execbox_rejected",
                                               "execbox_spawner_restarts",
                                               "execbox_run_duration_seconds_sum",
                                               "execbox_run_duration_seconds_count"))]
    return {k: round(after[k] - before.get(k, 0), 3) for k in keys
            if after[k] - before.get(k, 0)}


def measure(svc, payload_name, payload_file, conc, cfg, roots):
    """One service, one cell: warm-up, drain, measured load.sh run, drain."""
    rec = {"service": svc.name}
    if isinstance(svc, Execbox) and not svc.alive():
        raise RuntimeError("execbox serve is not running any more (see its log)")
    label = f"{svc.name}-{payload_name}-c{conc}"
    if cfg.drain:
        rec["idle_wait_before_s"] = svc.wait_idle()
        if cfg.warmup > 0:
            w = warmup(svc, payload_file, conc, cfg.warmup, cfg.timeout, cfg.peer_dir)
            rec["warmup"] = {"requests": w["requests"], **counts(w)} if w else None
            rec["drain_after_warmup_s"] = svc.wait_idle()
        warm = 0
    else:
        warm = cfg.warmup
    if isinstance(svc, Execbox):
        m0 = execbox_metrics(svc.private)
        log0 = os.path.getsize(svc.logfile)
    t0 = time.time()
    c0 = cpu_snapshot(roots)
    res, probe = load_sh(svc, payload_file, conc, cfg.duration, warm, cfg.timeout, label,
                         cfg.peer_dir)
    c1 = cpu_snapshot(roots)
    t1 = time.time()
    rec["wall_s"] = round(t1 - t0, 1)
    rec["cpu"] = cpu_usage(c0, c1)
    rec["probe"] = probe
    if cfg.drain:
        rec["drain_after_s"] = svc.wait_idle()
    w = res["wrk"]
    rec.update({
        "rps": w["rps"], "requests": w["requests"],
        "p50_ms": w["latency_ms"]["p50"], "p90_ms": w["latency_ms"]["p90"],
        "p99_ms": w["latency_ms"]["p99"], "max_ms": w["latency_ms"]["max"],
        "host_cpu_busy_pct": res["host_cpu_busy_pct"],
        **counts(w), "load_sh": res,
    })
    # CPU the service's whole process tree (server, jails, interpreters) spent per answer.
    # With DRAIN=1 the window holds no warm-up leftovers, but the runs abandoned at the
    # end are paid after it, so this slightly undercounts at high concurrency.
    rec["goodput"] = round(rec["ok_2xx"] / w["duration_s"], 2) if w["duration_s"] else 0.0
    done = rec["ok_2xx"] + 1  # + load.sh's probe
    rec["cpu_ms_per_answer"] = round(1000 * rec["cpu"]["tree_cpu_s"][svc.name] / done, 1)
    if isinstance(svc, Execbox):
        rec["alive_after"] = svc.alive()
        m1 = execbox_metrics(svc.private)
        rec["metrics_delta"] = metric_delta(m0, m1)
        rec["runs"] = execbox_runs(svc, log0, os.path.getsize(svc.logfile),
                                   dt.datetime.fromtimestamp(t1, dt.timezone.utc)
                                   .replace(tzinfo=None))
    return rec


# ---------------------------------------------------------------- checks and baseline ------


def check_answers(services, payloads):
    """Each service answers each payload correctly, once, before anything is timed."""
    out = {}
    for svc in services:
        for name, path in payloads:
            with open(path, "rb") as f:
                body = f.read()
            t0 = time.perf_counter()
            code, resp = http("POST", svc.url, body, token=svc.token)
            ms = (time.perf_counter() - t0) * 1000
            try:
                j = json.loads(resp)
            except ValueError:
                j = None
            ok = code == 200 and isinstance(j, dict)
            if ok and name in EXPECTED:
                ok = (j.get("result"), j.get("stdout")) == EXPECTED[name]
            out[f"{svc.name}/{name}"] = {"status": code, "ok": ok, "ms": round(ms, 1),
                                         "body": resp[:300].decode("utf-8", "replace")}
            if not ok:
                raise RuntimeError(f"{svc.name} answered {name} wrongly: HTTP {code} {resp[:500]!r}")
    return out


def baseline(peer_dir, iters=5):
    """The two Python envs outside any jail: start-up and `import numpy, pandas`, ms."""
    envs = {"execbox_env": os.path.join(os.environ.get("EXECBOX_PYTHON_ENV",
                                                       "/opt/execbox/python"), "bin", "python3"),
            "peer_env": os.path.join(peer_dir, ".venv", "bin", "python3")}
    codes = {"start": "pass", "import_pandas": "import numpy, pandas"}
    res = {e: {c: [] for c in codes} for e in envs}
    versions = {}
    for e, py in envs.items():
        if not os.path.exists(py):
            return {"skipped": f"{py} missing"}
        versions[e] = subprocess.run(
            [py, "-I", "-c", "import sys, numpy, pandas; print(sys.version.split()[0], "
             "'numpy', numpy.__version__, 'pandas', pandas.__version__)"],
            capture_output=True, text=True).stdout.strip()
    for i in range(iters + 1):  # first round untimed
        for e, py in envs.items():
            for c, code in codes.items():
                t0 = time.perf_counter()
                subprocess.run([py, "-I", "-c", code], check=True)
                if i:
                    res[e][c].append((time.perf_counter() - t0) * 1000)
    return {"versions": versions,
            "median_ms": {e: {c: round(statistics.median(v), 1) for c, v in d.items()}
                          for e, d in res.items()},
            "iterations": iters}


# ---------------------------------------------------------------- report -------------------


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def nonok(r):
    return "-" if r is None else f"{r['s429']}/{r['other_total']}"


def get(r, k):
    return None if r is None else r.get(k)


def pct_of(x):
    return "-" if x is None else f"{100 * x:.0f} %"


def report(summary):
    cells = summary["cells"]
    h = summary["host"]
    lines = []
    lines.append(f"execbox {summary['execbox_rev']} vs peer; {h['cores']} cores ({h['cpu_model']}),"
                 f" {h['mem_gib']} GiB, kernel {h['kernel']}; DURATION={summary['config']['duration']}s"
                 f" WARMUP={summary['config']['warmup']}s TIMEOUT={summary['config']['timeout']}"
                 f" DRAIN={int(summary['config']['drain'])}")
    lines.append(f"{summary['execbox_command']} (auth {'on, one user' if summary['execbox_auth'] else 'off'}); "
                 + ("peer: gunicorn -w 4 sync, Flask, nsjail per request" if summary["peer"]
                    else "peer not measured (PEER=0)"))
    lines.append(f"load average before {summary['loadavg_before']}, after {summary['loadavg_after']};"
                 f" host busy with both services idle: {summary['idle_host_busy_pct']} %"
                 f" (after waiting {summary.get('quiet_wait_s')} s for it to calm down);"
                 f" matrix {summary.get('matrix_seconds')} s")
    lines.append("")
    lines.append("| payload | c | execbox rps | execbox goodput/s | of peak | peer rps | peer goodput/s "
                 "| rps ratio | execbox p50 ms | peer p50 ms "
                 "| p50 ratio | execbox p99 ms | peer p99 ms | execbox 429/other | peer 429/other |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        e, p = c["execbox"], c.get("peer")
        lines.append(
            f"| {c['payload']} | {c['concurrency']} | {fmt(e['rps'])} | {fmt(e['goodput'])} | "
            f"{pct_of(e.get('goodput_of_peak'))} | {fmt(get(p, 'rps'))} | {fmt(get(p, 'goodput'))} | "
            f"{fmt(c['ratio_rps'], 2)}× | {fmt(e['p50_ms'])} | {fmt(get(p, 'p50_ms'))} | "
            f"{fmt(c['ratio_p50'], 2)}× | {fmt(e['p99_ms'])} | {fmt(get(p, 'p99_ms'))} | "
            f"{nonok(e)} | {nonok(p)} |")
    lines.append("")
    lines.append("rps counts every answer (429s too); goodput/s counts the 200s only; of peak = this"
                 " cell's goodput over the best goodput of the same payload in this run."
                 " ratios are execbox/peer (rps: higher is better for execbox; p50: lower is better)."
                 " 429/other: answers 429, and every other non-2xx answer or socket error.")
    lines.append("")
    lines.append("Where the time goes. execbox's client p50 is wrk's; server p50 = created_at ->"
                 " finished_at of its run records (queue included; ok runs answered within the"
                 " measured window); run = the interpreter in the jail; prep = the jail steps before"
                 " it (done ahead of the request for pooled jails). CPU ms/answer = CPU of the"
                 " service's whole process tree (server, jails, interpreters) per 2xx answer."
                 " other cores = host CPU used by anything but the two services and wrk during the"
                 " measured run (noise).")
    lines.append("")
    lines.append("| payload | c | client p50 | server p50 | run p50 | prep p50 | execbox CPU ms/answer "
                 "| peer CPU ms/answer | other cores (execbox run / peer run) "
                 "| drain after warm-up s (execbox / peer) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        e, p = c["execbox"], c.get("peer")
        r = e.get("runs", {})
        st = r.get("step_median_ms", {})
        lines.append(
            f"| {c['payload']} | {c['concurrency']} | {fmt(e['p50_ms'])} | "
            f"{fmt(r.get('server_ms_p50'))} | {fmt(st.get('run'))} | {fmt(st.get('prep_total'))} | "
            f"{fmt(e['cpu_ms_per_answer'])} | {fmt(get(p, 'cpu_ms_per_answer'))} | "
            f"{fmt(e['cpu']['other_cores'], 2)} / {fmt(get(get(p, 'cpu'), 'other_cores'), 2)} | "
            f"{fmt(e.get('drain_after_warmup_s'))} / {fmt(get(p, 'drain_after_warmup_s'))} |")
    lines.append("")
    lines.append("CPU shares during each measured execbox run (cores of the 2; execbox = the server,"
                 " spawner, jails and interpreters; wrk = the load generator):")
    lines.append("")
    lines.append("| payload | c | host busy | execbox tree | wrk | other | goodput/s per free core "
                 "| of peak |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        e = c["execbox"]
        u = e["cpu"]
        lines.append(f"| {c['payload']} | {c['concurrency']} | {fmt(u['host_busy_cores'], 2)} | "
                     f"{fmt(u.get('execbox_cores'), 2)} | {fmt(u['loadgen_cores'], 2)} | "
                     f"{fmt(u['other_cores'], 2)} | {fmt(e.get('goodput_per_free_core'))} | "
                     f"{pct_of(e.get('free_core_goodput_of_peak'))} |")
    lines.append("")
    lines.append("free core = cores - other: goodput per core left to the benchmark (execbox and"
                 " wrk), which cancels most of the noise of other sessions' work.")
    b = summary.get("baseline", {})
    if "median_ms" in b:
        lines.append("")
        lines.append("bare interpreters, no jail (median ms of "
                     f"{b['iterations']}): " + "; ".join(
                         f"{e} ({b['versions'][e]}): start {d['start']}, import numpy+pandas "
                         f"{d['import_pandas']}" for e, d in b["median_ms"].items()))
    lines.append("")
    lines.append("targets (issues): execbox rps >= peer rps and execbox p50 < peer p50 in every cell;"
                 " zero non-2xx answers from execbox that are not deliberate 429s; execbox goodput"
                 f" >= {pct_of(summary['goodput_target'])} of the payload's peak in every cell")
    for t in summary["targets"]:
        lines.append(f"  {t}")
    for note in summary["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def goodput_peaks(summary):
    """Best goodput per payload over this run's cells; each cell's share of it.

    Also per free core: goodput / (cores - other cores), where other cores is what processes
    outside this benchmark (other sessions' builds) took during the cell. On a shared host that
    noise moves the raw goodput of a cell by half or more; per free core it mostly cancels."""
    cores = summary["host"]["cores"] or 1
    peaks, free_peaks = {}, {}
    for c in summary["cells"]:
        e = c["execbox"]
        free = max(cores - max(e["cpu"]["other_cores"], 0.0), 0.1)
        e["goodput_per_free_core"] = round(e["goodput"] / free, 2)
        peaks[c["payload"]] = max(peaks.get(c["payload"], 0.0), e["goodput"])
        free_peaks[c["payload"]] = max(free_peaks.get(c["payload"], 0.0),
                                       e["goodput_per_free_core"])
    for c in summary["cells"]:
        e = c["execbox"]
        peak, fpeak = peaks[c["payload"]], free_peaks[c["payload"]]
        e["goodput_of_peak"] = round(e["goodput"] / peak, 3) if peak else None
        e["free_core_goodput_of_peak"] = (round(e["goodput_per_free_core"] / fpeak, 3)
                                          if fpeak else None)
    summary["goodput_peak"] = peaks
    summary["goodput_per_free_core_peak"] = free_peaks


def targets(summary):
    out, notes = [], []
    for c in summary["cells"]:
        e, p = c["execbox"], c.get("peer")
        tag = f"{c['payload']} c={c['concurrency']}:"
        share = e.get("goodput_of_peak")
        good = "met" if share is not None and share >= summary["goodput_target"] else "NOT met"
        bad = e["other_total"]
        vs_peer = ""
        if p is not None:
            thr = "met" if c["ratio_rps"] is not None and c["ratio_rps"] >= 1 else "NOT met"
            lat = "met" if c["ratio_p50"] is not None and c["ratio_p50"] < 1 else "NOT met"
            vs_peer = (f"throughput {thr} ({fmt(c['ratio_rps'], 2)}×), p50 {lat} "
                       f"({fmt(c['ratio_p50'], 2)}×), ")
        out.append(f"{tag} {vs_peer}goodput {good} ({fmt(e['goodput'])}/s, {pct_of(share)} of peak;"
                   f" per free core {pct_of(e.get('free_core_goodput_of_peak'))} of peak),"
                   f" execbox non-2xx other than 429: {bad}"
                   f"{'' if not bad else ' ' + json.dumps(e['other_status']) + ' ' + json.dumps(e['socket_errors'])}"
                   f", 429: {e['s429']}")
        if e["s429"]:
            why = {k: v for k, v in e.get("metrics_delta", {}).items() if "rejected" in k}
            notes.append(f"{tag} execbox answered {e['s429']} × 429 at concurrency "
                         f"{c['concurrency']} (admission cap {summary['execbox_admission_cap']});"
                         f" reasons {json.dumps(why)}")
        if p is not None and p["other_total"]:
            notes.append(f"{tag} peer non-2xx/errors: {json.dumps(p['other_status'])} "
                         f"{json.dumps(p['socket_errors'])}")
        r = e.get("runs", {})
        if set(r.get("statuses", {})) - {"ok"}:
            notes.append(f"{tag} execbox run statuses {json.dumps(r['statuses'])}")
        if r.get("log_problem_count"):
            notes.append(f"{tag} execbox logged {r['log_problem_count']} WARN/ERROR lines, e.g. "
                         f"{r['log_problems'][0][:200]}")
        if e.get("metrics_delta", {}).get("execbox_spawner_restarts"):
            notes.append(f"{tag} execbox spawner restarted")
        for s in (e, p) if p is not None else (e,):
            for k in ("idle_wait_before_s", "drain_after_warmup_s", "drain_after_s"):
                if k in s and s[k] is None:
                    notes.append(f"{tag} {s['service']} still busy 180 s after ({k}): hang?")
    return out, notes


# ---------------------------------------------------------------- main ---------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--execbox-url", required=True)
    ap.add_argument("--execbox-private-url", required=True)
    ap.add_argument("--execbox-args", default="")
    ap.add_argument("--execbox-pid", type=int, required=True)
    ap.add_argument("--execbox-log", required=True)
    ap.add_argument("--execbox-rev", default="unknown")
    ap.add_argument("--peer-url", required=True)
    ap.add_argument("--peer-dir", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    for u in (a.execbox_url, a.execbox_private_url, a.peer_url):
        if not u.startswith("http://127.0.0.1:"):
            sys.exit(f"refusing a non-loopback URL: {u}")

    class Cfg:
        duration = int(os.environ.get("DURATION", "15"))
        warmup = int(os.environ.get("WARMUP", "3"))
        timeout = os.environ.get("TIMEOUT", "60s")
        drain = os.environ.get("DRAIN", "1") != "0"
        peer_dir = a.peer_dir
    cfg = Cfg()
    payload_names = env_list("PAYLOADS", "hello,pandas")
    concs = [int(c) for c in env_list("CONCURRENCY", "1,4,16")]
    payloads = []
    for n in payload_names:
        p = n if os.path.isfile(n) else os.path.join(a.peer_dir, "payloads", f"{n}.json")
        if not os.path.isfile(p):
            sys.exit(f"no payload {n} ({p})")
        payloads.append((os.path.basename(p).removesuffix(".json"), p))

    ex = Execbox(a.execbox_url, int(a.execbox_url.rsplit(":", 1)[1]), a.execbox_private_url,
                 a.execbox_pid, a.execbox_log, os.environ.get("EXECBOX_TOKEN"))
    with_peer = os.environ.get("PEER", "1") != "0"
    peer = Peer(a.peer_url, int(a.peer_url.rsplit(":", 1)[1]), a.peer_dir) if with_peer else None
    cores = os.cpu_count() or 1
    summary = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "execbox_rev": a.execbox_rev,
        "execbox_command": "execbox " + a.execbox_args,
        "execbox_auth": bool(ex.token),
        "host": host_info(),
        "config": {"duration": cfg.duration, "warmup": cfg.warmup, "timeout": cfg.timeout,
                   "drain": cfg.drain, "payloads": payload_names, "concurrency": concs,
                   "wrk_threads": 1, "execbox_url": a.execbox_url, "peer_url": a.peer_url,
                   "execbox_defaults": {"max_running": cores, "max_queued": 8 * cores,
                                        "pool": min(cores, 4)}},
        "execbox_admission_cap": cores + 8 * cores,
        "loadavg_before": loadavg(),
        "peer": with_peer,
        "goodput_target": float(os.environ.get("GOODPUT_TARGET", "0.7")),
    }
    roots = {"execbox": ex.root_pid(), **({"peer": peer.root_pid()} if peer else {})}
    services = [ex, peer] if peer else [ex]
    # Other work on the host (builds, tests) is noise both services share; give it up to
    # QUIET_WAIT seconds to calm down (host busy < 25 % over 3 s with both services idle).
    quiet_wait = float(os.environ.get("QUIET_WAIT", "60"))
    t_q = time.monotonic()
    while True:
        a0 = cpu_times()
        time.sleep(3)
        idle_busy = busy_pct(a0, cpu_times())
        if idle_busy < 25 or time.monotonic() - t_q >= quiet_wait:
            break
        log(f"host busy {idle_busy} % with both services idle; waiting (QUIET_WAIT={quiet_wait:g}s)")
    summary["idle_host_busy_pct"] = idle_busy
    summary["quiet_wait_s"] = round(time.monotonic() - t_q - 3, 1)
    log(f"host busy with both services idle: {idle_busy} %, load average {loadavg()}")
    summary["checks"] = check_answers(services, payloads)
    log("both services answer every payload correctly")
    if os.environ.get("BASELINE", "1") != "0":
        log("timing the bare interpreters")
        summary["baseline"] = baseline(a.peer_dir)
    cells = []
    summary["cells"] = cells
    k = 0
    t_start = time.time()
    try:
        for name, path in payloads:
            for conc in concs:
                order = services if k % 2 == 0 else services[::-1]
                k += 1
                cell = {"payload": name, "concurrency": conc, "order": [s.name for s in order]}
                for svc in order:
                    log(f"{name} c={conc}: {svc.name} ...")
                    r = measure(svc, name, path, conc, cfg, roots)
                    cell[svc.name] = r
                    log(f"{name} c={conc}: {svc.name} {r['rps']:.1f} rps, p50 {r['p50_ms']:.1f} ms,"
                        f" p99 {r['p99_ms']:.1f} ms, 2xx {r['ok_2xx']}, 429 {r['s429']},"
                        f" other {r['other_total']}")
                e = cell["execbox"]
                p = cell.get("peer")
                cell["ratio_rps"] = round(e["rps"] / p["rps"], 3) if p and p["rps"] else None
                cell["ratio_p50"] = round(e["p50_ms"] / p["p50_ms"], 3) if p and p["p50_ms"] else None
                cells.append(cell)
    finally:
        summary["matrix_seconds"] = round(time.time() - t_start, 1)
        summary["loadavg_after"] = loadavg()
        summary["execbox_alive_at_end"] = ex.alive()
        if cells:
            goodput_peaks(summary)
            summary["targets"], summary["notes"] = targets(summary)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
        log(f"wrote {a.out}")
    print(report(summary))


if __name__ == "__main__":
    main()
