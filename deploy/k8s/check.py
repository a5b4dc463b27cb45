"""`make k8s-check`: render, validate and lint deploy/k8s and docker/Dockerfile, offline.

Run with the venv of deploy/k8s/requirements-check.txt (the Makefile makes it). Steps:

 1. Render every kustomization (base, redis, overlays/*) with render.py into OUT/<name>.yaml;
    when kubectl is installed, also with `kubectl kustomize` (it embeds kustomize and needs no
    network), and fail if the two renders differ.
 2. kubernetes-validate --strict against the pinned Kubernetes version: every rendered file,
    every source manifest on its own, and secret.example.yaml.
 3. checkov on the sources of deploy/k8s, on the renders and on docker/Dockerfile. Any failed
    check fails this step; the only skips are the annotated/commented ones, each with its
    reason in the manifest or the Dockerfile (docs/kubernetes.md lists them). As root, checkov runs in a new network namespace (`unshare
    -n`): it cannot reach anything, so nothing it does depends on the network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import render

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent


def kustomizations() -> list[Path]:
    return sorted(p.parent for p in HERE.rglob("kustomization.yaml"))


def key(obj: dict) -> tuple:
    m = obj["metadata"]
    return (obj["kind"], m.get("namespace", ""), m["name"])


def run(cmd: list[str], offline: bool = False) -> None:
    if offline and os.geteuid() == 0 and shutil.which("unshare"):
        cmd = ["unshare", "--net", "--", *cmd]
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True)


def render_all(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    kubectl = shutil.which("kubectl")
    files = []
    for d in kustomizations():
        name = str(d.relative_to(HERE)).replace("/", "-")
        objects = render.render(d)
        target = out / f"{name}.yaml"
        with target.open("w") as f:
            yaml.safe_dump_all(objects, f, sort_keys=False)
        files.append(target)
        print(f"rendered {d.relative_to(ROOT)} -> {target} ({len(objects)} objects)")
        if kubectl:
            text = subprocess.run(
                [kubectl, "kustomize", str(d)], check=True, capture_output=True, text=True
            ).stdout
            theirs = {key(o): o for o in yaml.safe_load_all(text) if o}
            ours = {key(o): o for o in objects}
            if theirs != ours:
                diff = sorted(set(theirs) ^ set(ours)) or [
                    k for k in ours if ours[k] != theirs[k]
                ]
                sys.exit(f"render.py and `kubectl kustomize {d}` differ on: {diff}")
            print(f"  same as kubectl kustomize ({len(theirs)} objects)")
        else:
            print("  (kubectl not installed: render.py's output is not cross-checked)")
    return files


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()

    rendered = render_all(a.out)
    sources = sorted(
        p
        for p in HERE.rglob("*.yaml")
        if p.name != "kustomization.yaml" and "tests" not in p.parts
    )
    run(
        [BIN / "kubernetes-validate", "--strict", "--quiet",
         "-k", a.kubernetes_version, *rendered, *sources]
    )
    print(f"kubernetes-validate {a.kubernetes_version} (strict): "
          f"{len(rendered)} renders and {len(sources)} source files valid")

    # One run over the sources (each with its namespace, as they could be applied), every
    # render (what a patch or an image change produces) and the Dockerfile.
    run(
        [BIN / "checkov", "--compact", "--quiet", "--skip-download",
         "--framework", "kubernetes", "dockerfile",
         "-f", *rendered, *sources, ROOT / "docker" / "Dockerfile"],
        offline=True,
    )
    print("k8s-check: manifests valid, checkov clean (every skip is annotated with its reason)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
