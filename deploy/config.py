"""Typed configuration of deployment (section `deploy`)."""

from __future__ import annotations

from pydantic import Field

from lathe.core.config import Strict


class DeployConfig(Strict):
    """Where the Kubernetes manifests are and how a rollout is applied."""

    manifests: str = Field(
        "k8s",
        description="The kustomize tree (base/, overlays/, schemas/), relative to the working directory "
        "(a checkout's root; /opt/lathe in the lathe image) or absolute.",
    )
    rollout_timeout_s: float = Field(
        900.0, gt=0, description="How long `lathe deploy` waits for the rollout before rolling back."
    )
