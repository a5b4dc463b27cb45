"""Render a kustomization the way `kubectl kustomize` does, for the subset deploy/k8s uses.

Why by hand: `make k8s-check` must run offline after its first install, and kustomize is not
on PyPI or in Debian 12 (Debian's kubernetes-client is 1.20, whose kustomize predates the
`patches` field). The subset is small and anything outside it is refused, never ignored:

  resources   files (one or more YAML documents) and directories holding a kustomization.yaml
  namespace   set on every namespaced object (the Namespace object itself is left alone)
  images      name -> newName / newTag / digest, on containers and initContainers
  patches     JSON 6902 operations (add, replace, remove) on a target picked by kind and name

When kubectl is installed, check.py also renders with `kubectl kustomize` and fails if the two
differ, so this file cannot drift from the real tool unnoticed.

Usage: render.py DIR  (prints the rendered YAML stream)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
}


class RenderError(Exception):
    """A kustomization outside the supported subset, or a patch that does not apply."""


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(directory: Path) -> list[dict]:
    """The objects of the kustomization in `directory`, transformed."""
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise RenderError(f"{directory}: no kustomization.yaml")
    (k,) = load_docs(kfile)
    unknown = set(k) - SUPPORTED
    if unknown:
        raise RenderError(f"{kfile}: fields this renderer does not support: {sorted(unknown)}")
    objects: list[dict] = []
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        objects.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in k.get("patches", []):
        apply_patch(objects, patch, kfile)
    for image in k.get("images", []):
        set_image(objects, image)
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objects


def apply_patch(objects: list[dict], patch: dict, kfile: Path) -> None:
    if set(patch) != {"target", "patch"} or set(patch["target"]) - {"kind", "name"}:
        raise RenderError(f"{kfile}: only inline JSON 6902 patches with a kind/name target")
    target = patch["target"]
    hits = [
        o
        for o in objects
        if o["kind"] == target.get("kind", o["kind"])
        and o["metadata"]["name"] == target.get("name", o["metadata"]["name"])
    ]
    if not hits:
        raise RenderError(f"{kfile}: patch target {target} matches nothing")
    ops = yaml.safe_load(patch["patch"])
    for obj in hits:
        for op in ops:
            json6902(obj, op)


def json6902(obj: dict, op: dict) -> None:
    """One RFC 6902 operation (add, replace, remove) on `obj`, in place."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    parent = obj
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    last = parts[-1]
    kind = op["op"]
    if isinstance(parent, list):
        if kind == "add":
            idx = len(parent) if last == "-" else int(last)
            parent.insert(idx, copy.deepcopy(op["value"]))
            return
        idx = int(last)
        if not 0 <= idx < len(parent):
            raise RenderError(f"{op['path']}: no such index")
    elif kind != "add" and last not in parent:
        raise RenderError(f"{op['path']}: no such field")
    else:
        idx = last
    if kind in ("add", "replace"):
        parent[idx] = copy.deepcopy(op["value"])
    elif kind == "remove":
        del parent[idx]
    else:
        raise RenderError(f"unsupported patch operation {kind!r}")


def set_image(objects: list[dict], image: dict) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise RenderError(f"images: unsupported fields in {image}")
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ref = c["image"]
            name, sep, tag = ref.partition("@") if "@" in ref else ref.rpartition(":")
            if not sep or "/" in tag:  # no tag at all ("redis" or "host:5000/redis")
                name, tag = ref, ""
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                c["image"] = f"{name}@{image['digest']}"
            elif "newTag" in image:
                c["image"] = f"{name}:{image['newTag']}"
            else:
                c["image"] = f"{name}{sep}{tag}" if tag else name


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        objects = render(Path(argv[1]))
    except (RenderError, OSError, KeyError, ValueError, yaml.YAMLError) as e:
        print(f"render.py: {argv[1]}: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
