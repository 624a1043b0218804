"""Loaders and invariant checkers for config/fleet (docs/fleet.md). Each checker returns the
violations it finds, so a test can show both that the shipped files pass and that a copy
broken on purpose is caught."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
FLEET = ROOT / "config" / "fleet"
GATEWAY_CONFIG = FLEET / "gateway" / "otelcol-gateway.yaml"
GUIDE = ROOT / "docs" / "fleet.md"
# Where a listener may bind: loopback, or the pod's (or VM's) own address from the environment.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1", "${env:OTELCOL_LISTEN_HOST}"}
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|DSN|HEADERS|AUTH")
LITERAL_SECRET = re.compile(r"\b[0-9a-f]{32,}\b|sentry_key=[0-9a-f]|https?://[0-9a-f]{16,}@|dd-api-key: *[^$\s]")
Doc = dict[str, Any]
Mutation = Callable[[Doc], None]


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[Doc]:
    """Every Kubernetes object shipped (the Kustomization has no metadata and is not one)."""
    files = sorted(FLEET.rglob("*.yaml"))
    return [d for f in files for d in load(f) if "metadata" in d and "kind" in d]


def collector() -> Doc:
    return load(GATEWAY_CONFIG)[0]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def gateway(docs: list[Doc] | None = None) -> Doc:
    return find(manifests() if docs is None else docs, "StatefulSet", "otel-gateway")


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(spec: Doc) -> list[Doc]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def container(workload: Doc, name: str) -> Doc:
    return next(c for c in containers(pod_spec(workload)) if c["name"] == name)


def env(item: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in item.get("env", [])}


def claim_mounts(workload: Doc) -> set[str]:
    """Mount paths backed by the workload's own persistent volume claims."""
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    mounts = [m for c in containers(pod_spec(workload)) for m in c.get("volumeMounts", [])]
    return {m["mountPath"] for m in mounts if m["name"] in claims}


def deep_merge(base: Doc, over: Doc) -> Doc:
    """Merge `over` into a copy of `base` the way otelcol merges several --config files."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else value
    return out


def walk(node: Any) -> Iterator[Any]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from walk(child)


def secret_refs(node: Any) -> list[Doc]:
    return [n["secretKeyRef"] for n in walk(node) if isinstance(n, dict) and "secretKeyRef" in n]


def literal_secrets(node: Any) -> list[str]:
    return [n[:12] for n in walk(node) if isinstance(n, str) and LITERAL_SECRET.search(n)]


def set_path(path: str, value: Any) -> Mutation:
    """A mutation that sets one value, addressed as "a.b.0.c" (numbers index lists)."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return mutate


def pipeline_violations(cfg: Doc) -> list[str]:
    bad = []
    for name, pipeline in cfg["service"]["pipelines"].items():
        processors = pipeline.get("processors", [])
        if processors[:1] != ["memory_limiter"]:
            bad.append(f"pipeline {name}: memory_limiter must come first, not {processors}")
        for p in processors:
            if p.split("/")[0] == "batch":
                bad.append(f"pipeline {name}: {p} acknowledges spans it holds in memory")
        for section in ("receivers", "processors", "exporters"):
            for c in pipeline.get(section, []):
                if c not in (cfg.get(section) or {}):
                    bad.append(f"pipeline {name}: {c} is not defined")
    return bad


def exporter_violations(cfg: Doc, persistent_paths: set[str]) -> list[str]:
    bad = []
    extensions = cfg.get("extensions") or {}
    in_service = cfg["service"].get("extensions", [])
    for name, exporter in cfg["exporters"].items():
        retry = exporter.get("retry_on_failure") or {}
        forever = str(retry.get("max_elapsed_time")) in ("0", "0s")
        if retry.get("enabled") is not True or not forever:
            bad.append(f"exporter {name}: retry_on_failure enabled, max_elapsed_time 0")
        queue = exporter.get("sending_queue") or {}
        storage = queue.get("storage")
        if queue.get("enabled") is False or not storage or queue.get("wait_for_result"):
            bad.append(f"exporter {name}: sending_queue must be enabled with a storage")
            continue
        if not storage.startswith("file_storage") or storage not in in_service:
            bad.append(f"exporter {name}: {storage} must be a file_storage in service.extensions")
            continue
        settings = extensions.get(storage) or {}
        if settings.get("directory") not in persistent_paths or settings.get("fsync") is not True:
            bad.append(f"exporter {name}: {storage} must fsync to a persistent volume")
    return bad


def listener_violations(cfg: Doc) -> list[str]:
    endpoints = [
        protocol.get("endpoint")
        for receiver in cfg["receivers"].values()
        for protocol in (receiver.get("protocols") or {}).values()
    ]
    for name, extension in (cfg.get("extensions") or {}).items():
        if name.split("/")[0] == "health_check":
            endpoints.append(extension.get("endpoint"))
    telemetry = (cfg["service"].get("telemetry") or {}).get("metrics") or {}
    for reader in telemetry.get("readers", []):
        endpoints.append(f"{reader['pull']['exporter']['prometheus']['host']}:0")
    return [
        f"listen {e}: only loopback or the pod's own address"
        for e in endpoints
        if not e or e.rsplit(":", 1)[0] not in LOCAL_HOSTS
    ]


def credential_violations(cfg: Doc) -> list[str]:
    bad = [f"credential written literally: {s}..." for s in literal_secrets(cfg)]
    for name, exporter in cfg["exporters"].items():
        headers = exporter.get("headers") or {}
        values = [v for k, v in headers.items() if SECRET_NAME.search(k.upper().replace("-", "_"))]
        values.append((exporter.get("api") or {}).get("key"))
        for value in values:
            if value and "${env:" not in value:
                bad.append(f"exporter {name}: credential not from the environment")
    return bad


def collector_violations(cfg: Doc, persistent_paths: set[str]) -> list[str]:
    return (
        pipeline_violations(cfg)
        + exporter_violations(cfg, persistent_paths)
        + listener_violations(cfg)
        + credential_violations(cfg)
    )


def object_violations(doc: Doc) -> list[str]:
    what = f"{doc['kind']} {doc['metadata']['name']}"
    bad = [f"{what}: credential written literally" for _ in literal_secrets(doc)]
    spec = doc.get("spec") or {}
    if doc["kind"] == "Service" and (spec.get("type", "ClusterIP") != "ClusterIP" or spec.get("externalIPs")):
        bad.append(f"{what}: only ClusterIP services (no NodePort, LoadBalancer, externalIPs)")
    shipped_secret = doc["kind"] == "Secret" and (doc.get("data") or doc.get("stringData"))
    if doc["kind"] in ("Ingress", "Gateway", "HTTPRoute") or shipped_secret:
        bad.append(f"{what}: must not be shipped")
    return bad


def workload_violations(workload: Doc) -> list[str]:
    what = f"{workload['kind']} {workload['metadata']['name']}"
    spec = pod_spec(workload)
    bad = [f"{what}: host namespaces" for k in ("hostNetwork", "hostPID") if spec.get(k)]
    for volume in spec.get("volumes", []):
        bad += [f"{what}: volume {volume['name']} is {k}" for k in ("emptyDir", "hostPath") if k in volume]
    for c in containers(spec):
        bad += [f"{what}/{c['name']}: hostPort" for p in c.get("ports", []) if "hostPort" in p]
        for name, var in env(c).items():
            if SECRET_NAME.search(name) and "secretKeyRef" not in (var.get("valueFrom") or {}):
                bad.append(f"{what}/{c['name']}: {name} must come from a Secret (secretKeyRef)")
    return bad


def manifest_violations(docs: list[Doc]) -> list[str]:
    bad = [v for doc in docs for v in object_violations(doc)]
    workloads = ("StatefulSet", "Deployment", "DaemonSet", "Job")
    return bad + [v for d in docs if d["kind"] in workloads for v in workload_violations(d)]
