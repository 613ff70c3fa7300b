"""Transparent interception: the iptables init step that captures a pod's traffic for
the sidecar (docs/interception.md)."""
