"""The Deployment's pod spec under a real container runtime: its container run by Docker with
the privileges, file system, volumes and limits the manifest gives it (no cluster here).

Each `docker run` flag is derived from deploy/k8s/base/deployment.yaml (a field that cannot be
translated fails the test rather than being dropped):

  capabilities drop/add      --cap-drop / --cap-add
  seccompProfile Localhost   --security-opt seccomp=docker/seccomp.json (the file the nodes
                             hold as profiles/execbox.json)
  allowPrivilegeEscalation   false: --security-opt no-new-privileges
  readOnlyRootFilesystem     --read-only
  runAsUser/runAsGroup       --user
  emptyDir volumes           --tmpfs at their mount paths, with their size limits
  resources.limits           --memory (= --memory-swap) and --cpus (at most the host's CPUs)
  (cgroup v2 runtimes)       --cgroupns private, what containerd and CRI-O do on cgroup v2
  ConfigMap, args            the environment and the command

Then: the pod becomes ready within the startup probe's budget; PID 1 has no_new_privs, only
SETUID and SETGID in its bounding set, and a read-only root; a pandas run works; as many runs as
EXECBOX_MAX_RUNNING, each near EXECBOX_MAX_MEMORY_MB, run together without the container being
OOM-killed (the resources arithmetic, for real); a run above its limit ends memory_limit; and
`docker stop` with the pod's grace period (less the preStop pause) drains and exits 0.

Needs Docker and the image: EXECBOX_K8S_IMAGE (`make k8s-docker-test` builds execbox:light and
sets it); without it every test is skipped with a message. Ports are published on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# As a module: a TestCase class bound here would have its tests collected here too.
import test_drift  # noqa: E402
from test_drift import mebibytes, millicpus  # noqa: E402

IMAGE = os.environ.get("EXECBOX_K8S_IMAGE")
SECRET = "k8s-pod-test-secret"


def docker(*args: str, check: bool = True) -> str:
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {r.stderr}")
    return r.stdout.strip()


def docker_flags(m: type[test_drift.Manifests]) -> list[str]:
    """`docker run` flags equivalent to the Deployment's container (see the module doc)."""
    sc = dict(m.c["securityContext"])
    pod_sc = m.pod["spec"].get("securityContext", {})
    flags = ["--cgroupns", "private"]
    caps = sc.pop("capabilities")
    flags += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    flags += [f"--cap-add={c}" for c in caps.get("add", [])]
    seccomp = sc.pop("seccompProfile", pod_sc.get("seccompProfile"))
    assert seccomp == {"type": "Localhost", "localhostProfile": "profiles/execbox.json"}, seccomp
    flags += ["--security-opt", f"seccomp={ROOT / 'docker' / 'seccomp.json'}"]
    if sc.pop("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if sc.pop("readOnlyRootFilesystem"):
        flags.append("--read-only")
    assert sc.pop("privileged") is False
    sc.pop("runAsNonRoot", None)
    flags += ["--user", f"{sc.pop('runAsUser')}:{sc.pop('runAsGroup')}"]
    assert not sc, f"securityContext fields this test does not translate: {sorted(sc)}"
    volumes = {v["name"]: v for v in m.pod["spec"]["volumes"]}
    for mount in m.c["volumeMounts"]:
        empty = volumes[mount["name"]]["emptyDir"]
        size = int(mebibytes(empty["sizeLimit"]))
        flags += ["--tmpfs", f"{mount['mountPath']}:rw,exec,size={size}m"]
    limits = m.c["resources"]["limits"]
    memory = int(mebibytes(limits["memory"]))
    cpus = min(millicpus(limits["cpu"]) / 1000, os.cpu_count() or 1)
    flags += [f"--memory={memory}m", f"--memory-swap={memory}m", f"--cpus={cpus}"]
    for k, v in m.cfg.items():
        flags += ["-e", f"{k}={v}"]
    flags += ["-e", f"APP_JWT_SECRET={SECRET}"]
    for port in m.ports.values():
        flags += ["-p", f"127.0.0.1::{port}"]
    return flags


def token() -> str:
    exe = os.environ.get("EXECBOX_BIN", str(ROOT / "target" / "debug" / "execbox"))
    out = subprocess.run(
        [exe, "token", "--user-id", "k8s-pod-test"],
        env={**os.environ, "APP_JWT_SECRET": SECRET},
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


@unittest.skipUnless(IMAGE, "needs Docker and the image: run `make k8s-docker-test`")
class PodUnderDocker(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        test_drift.Manifests.setUpClass()
        cls.m = m = test_drift.Manifests
        cls.id = docker("run", "-d", "--label", "execbox-test=k8s-pod",
                        *docker_flags(m), IMAGE, *m.c["args"])
        cls.addClassCleanup(lambda: docker("rm", "-f", cls.id, check=False))
        cls.addr = {
            name: docker("port", cls.id, f"{port}/tcp").splitlines()[0].rsplit(":", 1)
            for name, port in m.ports.items()
        }
        cls.auth = {"Authorization": f"Bearer {token()}", "Content-Type": "application/json"}
        sp = m.c["startupProbe"]
        deadline = time.monotonic() + sp["periodSeconds"] * sp["failureThreshold"]
        cls.ready = None
        while time.monotonic() < deadline:
            try:
                cls.ready = cls.request("GET", sp["httpGet"]["port"], sp["httpGet"]["path"])
                if cls.ready[0] == 200:
                    break
            except OSError:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", cls.id) != "true":
                break
            time.sleep(0.3)

    @classmethod
    def request(cls, method: str, port: str, path: str, body: dict | None = None,
                headers: dict | None = None) -> tuple[int, str]:
        host, p = cls.addr[port]
        c = http.client.HTTPConnection(host, int(p), timeout=120)
        try:
            c.request(method, path, body=json.dumps(body) if body else None, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read().decode("utf-8", "replace")
        finally:
            c.close()

    def run_code(self, code: str, **limits: int) -> dict:
        status, body = self.request(
            "POST", "http", "/v1/runs",
            {"language": "python", "files": [{"content": code}], "limits": limits}, self.auth,
        )
        self.assertEqual(status, 200, body)
        return json.loads(body)

    def logs(self) -> str:
        r = subprocess.run(["docker", "logs", "--tail", "40", self.id],
                           capture_output=True, text=True)
        return r.stdout + r.stderr

    def test_1_ready_with_the_pods_privileges(self) -> None:
        self.assertIsNotNone(self.ready, self.logs())
        self.assertEqual(self.ready[0], 200, f"{self.ready}\n{self.logs()}")
        status = docker("exec", self.id, "cat", "/proc/1/status")
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        self.assertEqual(fields["NoNewPrivs"].strip(), "1")
        self.assertEqual(int(fields["CapBnd"], 16), (1 << 6) | (1 << 7), "SETGID, SETUID only")
        self.assertEqual(fields["Seccomp"].strip(), "2")
        r = subprocess.run(["docker", "exec", self.id, "touch", "/k8s-probe"],
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("Read-only file system", r.stderr)

    def test_2_a_pandas_run(self) -> None:
        rec = self.run_code("import pandas as pd\nprint(int(pd.Series([1, 2, 3]).sum()))")
        self.assertEqual((rec["status"], rec["run"]["stdout"]), ("ok", "6\n"), rec)

    def test_3_every_slot_at_its_maximum_fits_the_pod(self) -> None:
        running = int(self.m.cfg["EXECBOX_MAX_RUNNING"])
        max_mib = int(self.m.cfg["EXECBOX_MAX_MEMORY_MB"])
        # Near the maximum (the interpreter and the tmpfs take the rest), touched page by page,
        # held while the others are too.
        code = (f"import time\nx = bytearray({max_mib - 40} * 2**20)\n"
                "for i in range(0, len(x), 4096): x[i] = 1\ntime.sleep(3)\nprint(len(x))")
        with ThreadPoolExecutor(running) as pool:
            recs = list(pool.map(lambda _: self.run_code(code, memory_mb=max_mib,
                                                         timeout_ms=25000), range(running)))
        for rec in recs:
            self.assertEqual(rec["status"], "ok", rec)
            self.assertGreater(rec["run"]["memory_peak_bytes"], (max_mib - 40) * 2**20)
        self.assertEqual(docker("inspect", "-f", "{{.State.OOMKilled}} {{.State.Running}}",
                                self.id), "false true", self.logs())
        rp = self.m.c["readinessProbe"]["httpGet"]
        self.assertEqual(self.request("GET", rp["port"], rp["path"])[0], 200)

    def test_4_a_run_above_its_limit_ends_memory_limit(self) -> None:
        rec = self.run_code("x = bytearray(300 * 2**20)\nprint(len(x))", memory_mb=128)
        self.assertEqual(rec["status"], "memory_limit", rec)

    def test_5_stop_drains_within_the_grace_period(self) -> None:
        spec = self.m.pod["spec"]
        budget = spec["terminationGracePeriodSeconds"] - self.m.c["lifecycle"]["preStop"]["sleep"]["seconds"]
        docker("stop", "-t", str(budget), self.id)
        self.assertEqual(docker("inspect", "-f", "{{.State.ExitCode}}", self.id), "0",
                         self.logs())


if __name__ == "__main__":
    unittest.main()
