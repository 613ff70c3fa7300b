"""Process lifecycle: binding listeners, the worker event loop, the supervisor.

`run(config, ...)` is what `fastproxy run` calls. With one worker the process is the
worker; with several, it forks them under a supervisor (supervisor.py) that restarts a
crashed worker. Owns signals, draining and process exit codes; the per-request work is
fastproxy._core's.
"""
from fastproxy.runtime.launch import run

__all__ = ["run"]
