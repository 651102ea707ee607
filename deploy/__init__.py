"""Deployment: render and validate the kustomize overlays offline, apply a model version to a cluster."""
