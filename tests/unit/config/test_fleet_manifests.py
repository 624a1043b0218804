"""config/fleet: the Kubernetes manifests and the host drop-in keep the invariants that protect
audit data (docs/fleet.md): queues, logs and checkpoints on persistent volumes, nothing exposed
outside the cluster, credentials only from Secrets, the sidecar sending to the gateway Service
and serving health on loopback. Each invariant is also shown to catch a broken copy."""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.config.fleet_checks import (
    FLEET,
    GATEWAY_CONFIG,
    GUIDE,
    ROOT,
    SECRET_NAME,
    claim_mounts,
    collector,
    container,
    env,
    find,
    gateway,
    load,
    manifest_violations,
    manifests,
    pod_spec,
    secret_refs,
    set_path,
)

SHIPPED = {
    "gateway/otelcol-gateway.yaml",
    "gateway/gateway.yaml",
    "gateway/kustomization.yaml",
    "agent/coding-agent.yaml",
    "host/audit-otlp-gateway.conf",
    "host/otelcol-gateway-tls.yaml",
}


def test_every_fleet_file_is_there_and_parses() -> None:
    files = {p.relative_to(FLEET).as_posix(): p for p in FLEET.rglob("*") if p.is_file()}
    assert set(files) == SHIPPED
    for name, path in files.items():
        if name.endswith(".yaml"):
            assert all(isinstance(doc, dict) for doc in load(path)), name


def test_manifests_expose_nothing_outside_the_cluster_and_read_credentials_from_secrets() -> None:
    assert manifest_violations(manifests()) == []


def test_sidecar_sends_to_the_gateway_service_port_that_reaches_the_receiver() -> None:
    docs = manifests()
    sidecar = container(find(docs, "StatefulSet", "coding-agent"), "audit-otlp")
    url = urlsplit(env(sidecar)["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"])
    namespace = load(FLEET / "gateway" / "kustomization.yaml")[0]["namespace"]
    assert url.hostname == f"otel-gateway.{namespace}.svc.cluster.local"
    assert url.path in ("", "/")  # a base URL: audit-otlp appends /v1/traces
    service = find(docs, "Service", "otel-gateway")
    port = next(p for p in service["spec"]["ports"] if p["port"] == url.port)
    labels = gateway(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    otelcol = container(gateway(docs), "otelcol")
    ports = [p for p in otelcol["ports"] if port["targetPort"] in (p["name"], p["containerPort"])]
    receiver = collector()["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert receiver == f"${{env:OTELCOL_LISTEN_HOST}}:{ports[0]['containerPort']}"
    pod_ip = {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env(otelcol)["OTELCOL_LISTEN_HOST"]["valueFrom"] == pod_ip


def test_sidecar_reads_the_log_read_only_and_keeps_its_state_on_its_own_volume() -> None:
    workload = find(manifests(), "StatefulSet", "coding-agent")
    sidecar, agent = container(workload, "audit-otlp"), container(workload, "agent")
    log = next(m for m in sidecar["volumeMounts"] if m["name"] == "agent-state")
    assert log["readOnly"] is True and log["mountPath"] == "/audit"
    assert not any(m.get("readOnly") for m in agent["volumeMounts"])
    assert claim_mounts(workload) >= {"/audit", "/var/lib/audit-otlp"}
    assert env(sidecar)["AUDIT_OTLP_FILE"]["value"] == "/audit/audit.jsonl"
    assert env(sidecar)["AUDIT_OTLP_CHECKPOINT"]["value"].startswith("/var/lib/audit-otlp/")
    assert sidecar["securityContext"]["runAsUser"] == 10001  # the image's user
    assert pod_spec(workload)["securityContext"]["fsGroup"] == 10001


def test_sidecar_serves_health_on_loopback_and_is_probed_from_inside_the_pod() -> None:
    sidecar = container(find(manifests(), "StatefulSet", "coding-agent"), "audit-otlp")
    assert env(sidecar)["AUDIT_OTLP_HEALTH_LISTEN"]["value"].startswith("127.0.0.1:")
    assert sidecar["livenessProbe"]["exec"]["command"] == ["audit-otlp", "health"]
    # No readiness probe: a gateway outage must not take the agent's pod out of its Services.
    assert "readinessProbe" not in sidecar and sidecar["restartPolicy"] == "Always"


def test_producer_and_sidecar_take_the_chain_key_from_the_same_secret() -> None:
    workload = find(manifests(), "StatefulSet", "coding-agent")
    shipper = env(container(workload, "audit-otlp"))["AUDIT_OTLP_CHAIN_KEY"]
    producer = env(container(workload, "agent"))["HYDRA_AUDIT_HMAC_KEY"]
    assert shipper["valueFrom"] == producer["valueFrom"] == {"secretKeyRef": {"name": "audit-chain-key", "key": "key"}}


def test_gateway_replicas_come_back_on_their_own_queue_volume() -> None:
    docs = manifests()
    workload = gateway(docs)
    assert collector()["extensions"]["file_storage/queue"]["directory"] in claim_mounts(workload)
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    budget = find(docs, "PodDisruptionBudget", "otel-gateway")
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]  # see "Scaling"


def test_kustomization_generates_the_config_map_the_replicas_load() -> None:
    kustomization = load(FLEET / "gateway" / "kustomization.yaml")[0]
    generator = kustomization["configMapGenerator"][0]
    assert generator["files"] == [GATEWAY_CONFIG.name]
    assert all((FLEET / "gateway" / r).is_file() for r in kustomization["resources"])
    workload = gateway()
    volumes = pod_spec(workload)["volumes"]
    volume = next(v for v in volumes if v.get("configMap", {}).get("name") == generator["name"])
    otelcol = container(workload, "otelcol")
    mount = next(m for m in otelcol["volumeMounts"] if m["name"] == volume["name"])
    assert otelcol["args"] == [f"--config={mount['mountPath']}/{GATEWAY_CONFIG.name}"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_gateway_with_the_generated_config_map() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(FLEET / "gateway")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rendered = list(yaml.safe_load_all(out))
    config_map = next(d for d in rendered if d["kind"] == "ConfigMap")
    name = config_map["metadata"]["name"]
    assert name.startswith("otel-gateway-config-")  # with the content's hash
    assert yaml.safe_load(config_map["data"][GATEWAY_CONFIG.name]) == collector()
    volumes = pod_spec(gateway(rendered))["volumes"]
    assert name in {v.get("configMap", {}).get("name") for v in volumes}
    assert {d["metadata"]["namespace"] for d in rendered} == {"observability"}


def test_the_guide_creates_every_secret_the_manifests_read_and_names_every_file() -> None:
    guide = GUIDE.read_text()
    refs = {(r["name"], r["key"]) for r in secret_refs(manifests())}
    assert len(refs) == 4, refs
    for name, key in sorted(refs):
        command = rf"create secret generic {name} (?:[^\n]|\\\n)*--from-literal={key}="
        assert re.search(command, guide), (name, key)
    for shipped in sorted(SHIPPED):
        assert f"config/fleet/{shipped}" in guide, shipped
    assert "docs/fleet.md" in (ROOT / "README.md").read_text()


def test_host_drop_in_sends_to_the_gateway_over_tls_and_holds_no_credential() -> None:
    lines = (FLEET / "host" / "audit-otlp-gateway.conf").read_text().splitlines()
    prefix = "Environment="
    settings = dict(x.removeprefix(prefix).split("=", 1) for x in lines if x.startswith(prefix))
    assert "[Service]" in lines
    assert urlsplit(settings["OTEL_EXPORTER_OTLP_ENDPOINT"]).scheme == "https"
    assert settings["OTEL_EXPORTER_OTLP_CERTIFICATE"].startswith("/etc/audit-otlp/")
    assert not [name for name in settings if SECRET_NAME.search(name)]


BREAKS = [
    (
        "a NodePort service",
        "Service",
        "otel-gateway",
        "spec.type",
        "NodePort",
        "ClusterIP",
    ),
    (
        "a hostPort on the receiver",
        "StatefulSet",
        "otel-gateway",
        "spec.template.spec.containers.0.ports.0.hostPort",
        4318,
        "hostPort",
    ),
    (
        "an API key as a literal env value",
        "StatefulSet",
        "otel-gateway",
        "spec.template.spec.containers.0.env.3",
        {"name": "DD_API_KEY", "value": "x"},
        "Secret",
    ),
    (
        "a queue on emptyDir",
        "StatefulSet",
        "otel-gateway",
        "spec.template.spec.volumes.0",
        {"name": "queue", "emptyDir": {}},
        "emptyDir",
    ),
    (
        "the chain key as a literal env value",
        "StatefulSet",
        "coding-agent",
        "spec.template.spec.containers.0.env.0",
        {"name": "HYDRA_AUDIT_HMAC_KEY", "value": "x"},
        "Secret",
    ),
    (
        "a literal Sentry DSN",
        "StatefulSet",
        "coding-agent",
        "spec.template.spec.containers.0.image",
        "https://0123456789abcdef0123@o1.ingest.sentry.io/1",
        "literally",
    ),
    (
        "the agent on the host network",
        "StatefulSet",
        "coding-agent",
        "spec.template.spec.hostNetwork",
        True,
        "host namespaces",
    ),
]


@pytest.mark.parametrize(
    ("kind", "name", "path", "value", "expected"),
    [b[1:] for b in BREAKS],
    ids=[b[0] for b in BREAKS],
)
def test_a_broken_manifest_is_caught(kind: str, name: str, path: str, value: object, expected: str) -> None:
    docs = manifests()
    set_path(path, value)(find(docs, kind, name))
    violations = manifest_violations(docs)
    assert any(expected in v for v in violations), violations
