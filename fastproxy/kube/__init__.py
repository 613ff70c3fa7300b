"""Deploying on Kubernetes: `fastproxy inject` (SPEC §13)."""
