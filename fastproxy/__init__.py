"""fastproxy: a service-mesh sidecar proxy whose hot path is Cython on uvloop."""

__version__ = "0.1.0"
