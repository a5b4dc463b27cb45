"""The manifests against the server they deploy: fails when deploy/k8s and execbox part ways.

The real `execbox serve` (EXECBOX_BIN) is started the way the Deployment starts it: the
container's args, the ConfigMap as its environment, a JWT secret as the Secret would give it.
Then, over HTTP, what the pod spec and its neighbours rely on:

  - the startup/readiness probe's path answers 200 on the port it names, once the canary ran;
  - the liveness probe's path answers 2xx on its port;
  - the Service's target port serves the public API, which does not serve the private paths;
  - the scrape port/path of the pod's annotations serves the metric the HPA scales on;
  - SIGTERM drains and exits 0 within the pod's grace period (less the preStop pause).

Plus the arithmetic the manifests promise (resources from admission settings, the grace period
from the drain) and that every selector, named port and reference points at something.

The ports in the manifests are fixed (8080, 9090), so this runs in a network namespace of its
own (`make k8s-check` starts it under `unshare --net`), where they cannot clash with anything on
the host; loopback is brought up here.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import render  # noqa: E402  (deploy/k8s/render.py)

# What deployment.yaml's resources comment declares for everything but the runs (server,
# spawner, prepared jails, /run); docs/kubernetes.md has the measurement behind it.
SERVER_OVERHEAD_MIB = 256
# A run's default CPU (cgroup cpu.max), Limits::default in crates/execbox-proto/src/limits.rs.
RUN_CPU_MILLIS = 1000


def objects() -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render.render(HERE / "base")}


def mebibytes(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", q)
    assert m, q
    return float(m.group(1)) * units.get(m.group(2), 1 / 2**20)


def millicpus(q: str) -> float:
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


def loopback_up() -> None:
    """Bring `lo` up in this (new) network namespace: SIOCGIFFLAGS, then SIOCSIFFLAGS | IFF_UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0).ljust(40, b"\0")
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, req)[:18])[1]
        if flags & 1:
            return
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1).ljust(40, b"\0"))


def get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


class Manifests(unittest.TestCase):
    """What the manifests promise each other and the server, read from the render."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.o = objects()
        cls.deploy = cls.o[("Deployment", "execbox")]
        cls.pod = cls.deploy["spec"]["template"]
        (cls.c,) = cls.pod["spec"]["containers"]
        cls.cfg = cls.o[("ConfigMap", "execbox-config")]["data"]
        cls.ports = {p["name"]: p["containerPort"] for p in cls.c["ports"]}

    def test_resources_cover_every_running_run_at_its_maximum(self) -> None:
        running = int(self.cfg["EXECBOX_MAX_RUNNING"])
        per_run = int(self.cfg["EXECBOX_MAX_MEMORY_MB"])
        res = self.c["resources"]
        limit = mebibytes(res["limits"]["memory"])
        self.assertGreaterEqual(
            limit,
            running * per_run + SERVER_OVERHEAD_MIB,
            f"memory limit {res['limits']['memory']} < {running} runs x {per_run} MiB "
            f"+ {SERVER_OVERHEAD_MIB} MiB: a pod at full admission would be OOM-killed",
        )
        self.assertGreaterEqual(millicpus(res["limits"]["cpu"]), running * RUN_CPU_MILLIS)
        self.assertEqual(res["requests"], res["limits"], "Guaranteed QoS: requests = limits")

    def test_grace_period_covers_the_drain(self) -> None:
        grace = int(self.cfg["EXECBOX_SHUTDOWN_GRACE_SECS"])
        longest_run = int(self.cfg["EXECBOX_MAX_TIMEOUT_MS"]) / 1000
        pause = self.c["lifecycle"]["preStop"]["sleep"]["seconds"]
        total = self.pod["spec"]["terminationGracePeriodSeconds"]
        self.assertLessEqual(longest_run, grace, "a running run could not finish in the drain")
        self.assertGreaterEqual(total, pause + grace + 10, "no margin for the teardown")

    def test_env_and_ports_agree(self) -> None:
        self.assertEqual(self.cfg["EXECBOX_LISTEN"], f"0.0.0.0:{self.ports['http']}")
        # The private listener must take the kubelet's probes on the pod's IP.
        self.assertEqual(self.cfg["EXECBOX_PRIVATE_LISTEN"], f"0.0.0.0:{self.ports['private']}")
        ann = self.pod["metadata"]["annotations"]
        self.assertEqual(int(ann["prometheus.io/port"]), self.ports["private"])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(self.c[probe]["httpGet"]["port"], "private", probe)

    def test_references_resolve(self) -> None:
        labels = self.pod["metadata"]["labels"]
        selects = lambda sel: all(labels.get(k) == v for k, v in sel.items())  # noqa: E731
        self.assertTrue(selects(self.deploy["spec"]["selector"]["matchLabels"]))
        self.assertTrue(selects(self.o[("Service", "execbox")]["spec"]["selector"]))
        self.assertTrue(selects(self.o[("PodDisruptionBudget", "execbox")]["spec"]["selector"]["matchLabels"]))
        policy = self.o[("NetworkPolicy", "execbox")]["spec"]
        self.assertTrue(selects(policy["podSelector"]["matchLabels"]))
        for rule in policy["ingress"]:
            for p in rule["ports"]:
                self.assertIn(p["port"], self.ports, "NetworkPolicy names a port the pod lacks")
        svc_port = self.o[("Service", "execbox")]["spec"]["ports"][0]
        self.assertIn(svc_port["targetPort"], self.ports)
        backend = self.o[("Ingress", "execbox")]["spec"]["rules"][0]["http"]["paths"][0]["backend"]
        self.assertEqual(backend["service"]["name"], "execbox")
        self.assertEqual(backend["service"]["port"]["name"], svc_port["name"])
        target = self.o[("HorizontalPodAutoscaler", "execbox")]["spec"]["scaleTargetRef"]
        self.assertEqual((target["kind"], target["name"]), ("Deployment", "execbox"))
        sa = self.pod["spec"]["serviceAccountName"]
        self.assertIs(self.o[("ServiceAccount", sa)]["automountServiceAccountToken"], False)
        self.assertEqual(self.c["envFrom"][0]["configMapRef"]["name"], "execbox-config")
        # The Secret's keys (secret.example.yaml) are the ones the pod reads.
        (secret,) = render.load_docs(HERE / "secret.example.yaml")
        for e in self.c["env"]:
            ref = e["valueFrom"]["secretKeyRef"]
            self.assertEqual(ref["name"], secret["metadata"]["name"])
            self.assertIn(ref["key"], secret["stringData"])

    def test_capabilities_are_the_documented_ones(self) -> None:
        """The capability set is docs/security.md's `docker run` flags, no more, no less."""
        doc = (ROOT / "docs" / "security.md").read_text()
        section = doc[doc.index("### In a container"):]
        documented = set(re.findall(r"--cap-add (\w+)", section.split("```")[1]))
        caps = self.c["securityContext"]["capabilities"]
        self.assertEqual(caps["drop"], ["ALL"])
        self.assertEqual(set(caps["add"]), documented)


class Server(unittest.TestCase):
    """The real `execbox serve`, started as the Deployment starts it."""

    @classmethod
    def setUpClass(cls) -> None:
        m = Manifests
        m.setUpClass()
        cls.m = m
        exe = os.environ.get("EXECBOX_BIN", str(ROOT / "target" / "debug" / "execbox"))
        loopback_up()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXECBOX_")}
        env.update(m.cfg)
        env["APP_JWT_SECRET"] = "k8s-drift-test-secret"
        cls.log = tempfile.TemporaryFile()
        cls.proc = subprocess.Popen(
            [exe, *m.c["args"]], env=env, stdout=cls.log, stderr=subprocess.STDOUT
        )
        cls.addClassCleanup(cls.stop)
        # The startup probe's whole budget, as the kubelet would give it.
        sp = m.c["startupProbe"]
        deadline = time.monotonic() + sp["periodSeconds"] * sp["failureThreshold"]
        cls.ready = None
        while time.monotonic() < deadline and cls.proc.poll() is None:
            try:
                cls.ready = get(m.ports[sp["httpGet"]["port"]], sp["httpGet"]["path"])
                if cls.ready[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)

    @classmethod
    def stop(cls) -> None:
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait()

    def tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-3000:]

    def test_1_startup_and_readiness_probes_pass(self) -> None:
        self.assertIsNotNone(self.ready, f"server never answered its probe:\n{self.tail()}")
        self.assertEqual(self.ready[0], 200, f"{self.ready}\n{self.tail()}")
        rp = self.m.c["readinessProbe"]["httpGet"]
        status, body = get(self.m.ports[rp["port"]], rp["path"])
        self.assertEqual(status, 200, body)
        self.assertIn('"ready"', body)

    def test_2_liveness_probe_passes(self) -> None:
        lp = self.m.c["livenessProbe"]["httpGet"]
        status, _ = get(self.m.ports[lp["port"]], lp["path"])
        self.assertTrue(200 <= status < 400, status)  # what the kubelet counts as success

    def test_3_service_port_serves_the_public_api_only(self) -> None:
        svc = self.m.o[("Service", "execbox")]["spec"]["ports"][0]
        port = self.m.ports[svc["targetPort"]]
        status, body = get(port, "/openapi.json")
        self.assertEqual(status, 200)
        self.assertIn('"openapi"', body)
        status, _ = get(port, "/v1/runtimes")
        self.assertEqual(status, 401, "the public API must ask for a token")
        for path in ("/healthz", "/readyz", "/metrics"):
            self.assertEqual(get(port, path)[0], 404, f"{path} must stay off the public port")

    def test_4_hpa_metric_is_scraped(self) -> None:
        ann = self.m.pod["metadata"]["annotations"]
        status, body = get(int(ann["prometheus.io/port"]), ann["prometheus.io/path"])
        self.assertEqual(status, 200)
        hpa = self.m.o[("HorizontalPodAutoscaler", "execbox")]["spec"]["metrics"]
        (pods,) = [x["pods"] for x in hpa if x["type"] == "Pods"]
        name = pods["metric"]["name"]
        # A gauge, one series per pod: what prometheus-adapter serves as a Pods metric.
        self.assertRegex(body, rf"(?m)^# TYPE {name} gauge$")
        self.assertRegex(body, rf"(?m)^{name} \d+$")

    def test_5_sigterm_drains_within_the_grace_period(self) -> None:
        spec = self.m.pod["spec"]
        budget = spec["terminationGracePeriodSeconds"] - self.m.c["lifecycle"]["preStop"]["sleep"]["seconds"]
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            self.fail(f"still running {budget} s after SIGTERM: the kubelet would SIGKILL it")
        self.assertEqual(code, 0, self.tail())


if __name__ == "__main__":
    unittest.main()
