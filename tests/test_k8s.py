"""Kubernetes manifests (rendered by real kustomize, validated offline) and `deploy` against an
in-memory cluster: no API server can run on this machine, so the cluster is the one fake."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest

from lathe.core.errors import LatheError
from lathe.deploy.kube import (
    DEFAULT_MANIFESTS,
    OVERLAYS,
    SERVING,
    VERSION_ANNOTATION,
    deploy,
    policy_errors,
    render,
    schema_errors,
    validate_overlays,
    with_model_version,
)
from tests.conftest import REPO

MANIFESTS = REPO / DEFAULT_MANIFESTS  # k8s/ of this checkout, wherever pytest runs from


def test_every_overlay_builds_and_validates() -> None:
    assert validate_overlays(manifests=MANIFESTS) == {o: [] for o in OVERLAYS}


def test_overlays_differ_where_they_should() -> None:
    docs = {o: {f"{d['kind']}/{d['metadata']['name']}": d for d in render(o, MANIFESTS)} for o in OVERLAYS}
    assert docs["staff"]["Deployment/triton"]["metadata"]["namespace"] == "lathe-staff"
    assert docs["production"]["HorizontalPodAutoscaler/triton"]["spec"]["minReplicas"] == 3
    assert "HorizontalPodAutoscaler/triton" not in docs["keda"] and "ScaledObject/triton" in docs["keda"]
    gpu = docs["gpu"]["Deployment/triton"]["spec"]["template"]["spec"]["containers"][0]
    assert (
        gpu["image"].endswith(":24.10-vllm-python-py3")
        and docs["gpu"]["ConfigMap/lathe-config"]["data"]["REPOSITORY"] == "triton-vllm"
    )
    hpa = docs["production"]["HorizontalPodAutoscaler/triton"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    rules = docs["production"]["PrometheusRule/triton"]["spec"]["groups"][0]["rules"]
    assert hpa in [r.get("record") for r in rules]  # the HPA scales on a series the rule records
    job = docs["production"]["Job/lathe-train"]["spec"]
    assert job["completionMode"] == "Indexed" and job["template"]["spec"]["subdomain"] == "lathe-train"


def test_the_gateway_is_deployed_beside_triton_and_its_dashboard_plots_real_metrics() -> None:
    import json
    import re

    from lathe.serving.gateway import GatewayMetrics

    for overlay in OVERLAYS:
        docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in render(overlay, MANIFESTS)}
        container = docs["Deployment/gateway"]["spec"]["template"]["spec"]["containers"][0]
        assert "--triton-url triton:8001" in container["args"][0] and docs["Service/triton"]["spec"]["ports"][1]["port"] == 8001
        assert docs["HorizontalPodAutoscaler/gateway"]["spec"]["scaleTargetRef"]["name"] == "gateway"
        assert {"Service/gateway", "PodDisruptionBudget/gateway", "PodMonitor/gateway"} <= docs.keys()
        dashboards = [d for k, d in docs.items() if k.startswith("ConfigMap/lathe-grafana-dashboard")]
        assert len(dashboards) == 1 and dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert docs["Deployment/gateway"]["spec"]["replicas"] == 2  # keda: the base's
    staff = {f"{d['kind']}/{d['metadata']['name']}": d for d in render("staff", MANIFESTS)}
    assert staff["HorizontalPodAutoscaler/gateway"]["spec"]["maxReplicas"] == 2
    # every series the dashboard queries is one the gateway exports
    dashboard = json.loads((MANIFESTS / "base" / "gateway" / "grafana-dashboard.json").read_text())
    queried = {
        m for p in dashboard["panels"] for target in p["targets"] for m in re.findall(r"\b(lathe_[a-z_]+)", target["expr"])
    }
    from prometheus_client import generate_latest

    metrics = GatewayMetrics()
    metrics.completions.labels("production", "3", "python").inc()
    metrics.latency.labels("production", "3").observe(0.1)
    metrics.first_token.labels("production", "3").observe(0.1)
    for counter in metrics.events.values():
        counter.labels("production", "3", "python").inc()
    metrics.errors.labels("503").inc()
    metrics.rejected_events.labels("unknown_completion").inc()
    exported = set(re.findall(r"^(lathe_[a-z_]+)", generate_latest(metrics.registry).decode(), re.M))
    assert queried and queried <= exported, queried - exported
    assert {
        "lathe_suggestions_accepted_total",
        "lathe_suggestions_shown_total",
        "lathe_completion_latency_seconds_bucket",
    } <= queried


def _broken(tmp_path: Path, edit) -> Path:
    """A copy of k8s/ with one file edited; returns the staff overlay inside it."""
    copy_root = tmp_path / "k8s"
    shutil.copytree(MANIFESTS, copy_root)
    edit(copy_root)
    return copy_root / "overlays" / "staff"


def test_a_misspelled_field_fails_strict_validation(tmp_path: Path) -> None:
    def misspell(root: Path) -> None:
        f = root / "base" / "serving" / "deployment.yaml"
        f.write_text(f.read_text().replace("readinessProbe:", "readynessProbe:"))

    errors = schema_errors(render(_broken(tmp_path, misspell)), tmp_path / "k8s")
    assert any("Deployment/triton" in e and "readynessProbe" in e for e in errors), errors


def test_a_misspelled_custom_resource_field_fails(tmp_path: Path) -> None:
    def misspell(root: Path) -> None:
        f = root / "base" / "serving" / "monitoring.yaml"
        f.write_text(f.read_text().replace("podMetricsEndpoints:", "podMetricEndpoints:"))

    assert any(e.startswith("PodMonitor/triton") for e in schema_errors(render(_broken(tmp_path, misspell)), tmp_path / "k8s"))


def test_policy_catches_latest_tags_missing_probes_and_inline_secrets() -> None:
    docs = render("production", MANIFESTS)
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "nvcr.io/nvidia/tritonserver:latest"
    del container["livenessProbe"]
    container.setdefault("env", []).append({"name": "WANDB_API_KEY", "value": "abc123"})
    del container["resources"]["limits"]
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"k": "v"}}
    errors = policy_errors([deployment, secret])
    assert any("pinned tag" in e for e in errors) and any("lacks livenessProbe" in e for e in errors)
    assert any("WANDB_API_KEY inline" in e for e in errors) and any(
        "resources.requests and resources.limits" in e for e in errors
    )
    assert any(e.startswith("Secret/creds") for e in errors)


class FakeCluster:
    """An in-memory API server: objects by kind/namespace/name; the rollout outcome is scripted."""

    def __init__(self, rollout: list[bool | None]) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.rollout = rollout
        self.applied: list[str] = []

    def _key(self, doc: dict) -> tuple[str, str, str]:
        return doc["kind"], doc["metadata"].get("namespace", "default"), doc["metadata"]["name"]

    def get(self, doc: dict) -> dict | None:
        live = self.objects.get(self._key(doc))
        return copy.deepcopy(live) if live else None

    def apply(self, doc: dict) -> None:
        live = copy.deepcopy(doc)
        live["metadata"]["resourceVersion"] = str(len(self.applied))  # a server-owned field deploy must strip
        live["status"] = {"observedGeneration": 1}
        self.objects[self._key(doc)] = live
        self.applied.append(f"{doc['kind']}/{doc['metadata']['name']}")

    def rollout_done(self, namespace: str, name: str) -> bool | None:
        return self.rollout.pop(0) if self.rollout else None


def _version(cluster: FakeCluster) -> str:
    dep = cluster.objects[("Deployment", "lathe-staff", SERVING)]
    return dep["spec"]["template"]["metadata"]["annotations"][VERSION_ANNOTATION]


def test_deploy_applies_waits_and_rolls_back_a_failed_rollout() -> None:
    docs = render("staff", MANIFESTS)
    cluster = FakeCluster([None, True])
    assert deploy(with_model_version(docs, "3"), cluster, timeout_s=5, poll_s=0) == "deployed"
    assert (
        _version(cluster) == "3" and cluster.objects[("ConfigMap", "lathe-staff", "lathe-config")]["data"]["MODEL_VERSION"] == "3"
    )
    assert len(cluster.applied) == len(docs)
    cluster.rollout = [None, False]  # version 4 never becomes ready
    with pytest.raises(LatheError, match="rolled back"):
        deploy(with_model_version(docs, "4"), cluster, timeout_s=5, poll_s=0)
    assert (
        _version(cluster) == "3" and cluster.objects[("ConfigMap", "lathe-staff", "lathe-config")]["data"]["MODEL_VERSION"] == "3"
    )
    cluster.rollout = []  # never answers: the timeout rolls back too
    with pytest.raises(LatheError, match="not ready after 0s"):
        deploy(with_model_version(docs, "5"), cluster, timeout_s=0.01, poll_s=0)
    assert _version(cluster) == "3"
