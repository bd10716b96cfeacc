"""Render every Kustomize variant with `kubectl kustomize` and validate each object against
the Kubernetes schemas (kubernetes-validate), then check what the manifests promise."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "kubernetes"
VARIANTS = ["overlays/cpu", "overlays/gpu", "overlays/cpu-front"]
KUBERNETES_VERSION = "1.32.0"  # the kubectl on the machine image


def render(variant: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the Kustomize variants)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / variant)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Objects by kind; ConfigMaps by their generator's name (kind/name, hash dropped)."""
    out = {}
    for o in objects:
        key = o["kind"]
        if key == "ConfigMap":
            key = f"ConfigMap/{o['metadata']['name'].rsplit('-', 1)[0]}"
        out[key] = o
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_validates_against_the_schemas(variant: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objects = render(variant)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted([
        "ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
        "PodDisruptionBudget", "Service", "ServiceAccount",
    ] + (["ConfigMap"] if variant.endswith("front") else []))
    for obj in objects:
        # strict: unknown fields (a typo in a manifest) are errors too
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_fails_validation() -> None:
    """The validator used above does reject a wrong object (so the test can fail)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    deployment = by_kind(render("overlays/cpu"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limitz"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_what_the_manifests_promise(variant: str) -> None:
    objects = by_kind(render(variant))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == ({"wacht", "front"} if variant.endswith("front") else {"wacht"})
    container = containers["wacht"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] and psc["seccompProfile"]["type"] == "RuntimeDefault"
    for each in containers.values():
        sc = each["securityContext"]
        assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        # Requests and limits are set (from measured figures, see the overlay).
        resources = each["resources"]
        assert resources["requests"]["cpu"] and resources["requests"]["memory"]
        assert resources["limits"]["memory"]
    assert pod["automountServiceAccountToken"] is False
    # Probes on the plaintext health-only port, which the config opens.
    config = yaml.safe_load(objects["ConfigMap/wacht-config"]["data"]["config.yaml"])
    health_port = int(config["health_address"].rsplit(":", 1)[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port
    assert pod["terminationGracePeriodSeconds"] > config["shutdown_grace_s"]
    # The clients' port (the Service's `grpc`) is TLS, and closes connections periodically
    # so that clients re-resolve: Wacht's own, or the front's in front of it.
    grpc_ports = [(c["name"], p["containerPort"]) for c in containers.values()
                  for p in c.get("ports", []) if p["name"] == "grpc"]
    if variant.endswith("front"):
        assert grpc_ports == [("front", 50051)]
        assert config["address"].startswith("127.0.0.1:") and "tls" not in config
        front_conf = objects["ConfigMap/wacht-front"]["data"]["nginx.conf"]
        assert f"server {config['address']};" in front_conf
        assert "ssl_certificate /etc/wacht/tls/tls.crt;" in front_conf
        assert "keepalive_time 300s;" in front_conf and "limit_conn wacht_all 16;" in front_conf
        mounts = {m["mountPath"] for m in containers["front"]["volumeMounts"]}
        assert {"/etc/wacht/front", "/etc/wacht/tls", "/tmp/front"} <= mounts
        assert "-s quit" in " ".join(containers["front"]["lifecycle"]["preStop"]["exec"]["command"])
    else:
        assert grpc_ports == [("wacht", 50051)]
        assert config["tls"]["cert_file"].startswith("/etc/wacht/tls/")
        assert config["max_connection_age_s"] > 0
    resources = container["resources"]
    # Headless Service; deny-all egress; HPA on the exported gauge; PDB; spread.
    assert objects["Service"]["spec"]["clusterIP"] == "None"
    policy = objects["NetworkPolicy"]["spec"]
    assert "Egress" in policy["policyTypes"] and policy["egress"] == []
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == "wacht_inflight_texts"
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    # The config map name carries kustomize's content hash and the pod uses that name.
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == (
        objects["ConfigMap/wacht-config"]["metadata"]["name"])
    if variant.endswith("gpu"):
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert {"name": "WACHT_DEVICE", "value": "cuda"} in container["env"]


def test_config_in_the_manifests_loads(tmp_path: Path) -> None:
    """The ConfigMap's config.yaml is a valid Wacht config (paths made local)."""
    from wacht.service.config import load_config

    text = (K8S / "base" / "config.yaml").read_text()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "callers.yaml").write_text("callers: []\n")
    text = text.replace("/etc/wacht/tls/", f"{tmp_path}/").replace(
        "/etc/wacht/callers/", f"{tmp_path}/").replace("/opt/wacht/policies", "policies")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(path, env={})
    assert config.tls.enabled and config.auth.keys_file is not None
    assert config.health_listen_address() == "0.0.0.0:50052"


def test_shipped_client_service_config_is_the_clients_default() -> None:
    from wacht.client import SERVICE_CONFIG

    shipped = json.loads((K8S / "client-service-config.json").read_text())
    assert shipped == SERVICE_CONFIG
    assert shipped["loadBalancingConfig"] == [{"round_robin": {}}]
    retry = shipped["methodConfig"][0]["retryPolicy"]
    assert retry["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]


def test_autoscaling_extras_name_the_exported_metric() -> None:
    rules = yaml.safe_load((K8S / "extras" / "prometheus-adapter-rules.yaml").read_text())
    assert rules["rules"][0]["name"]["as"] == "wacht_inflight_texts"
    keda = yaml.safe_load((K8S / "extras" / "keda-scaledobject.yaml").read_text())
    assert "wacht_inflight_texts" in keda["spec"]["triggers"][0]["metadata"]["query"]
    from wacht.service.observability.metrics import Metrics

    assert "wacht_inflight_texts" in {m.name for m in Metrics().registry.collect()}


def test_the_front_overlay_config_is_current(tmp_path: Path) -> None:
    """overlays/cpu-front/nginx.conf is `wacht front-config`'s output (the command in its
    kustomization.yaml), and Wacht's config there loads."""
    from wacht.service.config import load_config
    from wacht.service.front import Front, render

    overlay = K8S / "overlays" / "cpu-front"
    expected = render(Front(
        upstream="127.0.0.1:50061", listen="0.0.0.0:50051", limit=16, per_caller=12,
        run_dir="/tmp/front", tls_cert="/etc/wacht/tls/tls.crt",
        tls_key="/etc/wacht/tls/tls.key", max_connection_age_s=300))
    assert (overlay / "nginx.conf").read_text() == expected
    assert "--limit 16" in (overlay / "kustomization.yaml").read_text()
    (tmp_path / "callers.yaml").write_text("callers: []\n")
    text = (overlay / "config.yaml").read_text().replace(
        "/etc/wacht/callers/", f"{tmp_path}/").replace("/opt/wacht/policies", "policies")
    (tmp_path / "config.yaml").write_text(text)
    config = load_config(tmp_path / "config.yaml", env={})
    assert not config.tls.enabled and config.health_listen_address() == "0.0.0.0:50052"
