"""`fastproxy run`: bind every listener, then serve in-process or under a supervisor."""
from __future__ import annotations

import logging
import mmap
import resource
from dataclasses import dataclass

from fastproxy._core.proxy import METRICS_BYTES, SHARED_BYTES
from fastproxy.observe import failed

from fastproxy.config import Config
from fastproxy.runtime.sockets import BindError, bind_listeners, close_all

log = logging.getLogger("fastproxy")


def raise_fd_limit() -> None:
    """A sidecar holds two descriptors per proxied connection: allow as many as we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_identity(config: Config) -> None:
    """Refuse to start with unusable identity files (each worker loads them again)."""
    ident = config.identity
    if ident is None or ident.automatic:
        return
    from fastproxy.identity.svid import SVIDError
    from fastproxy.identity.tls import load_files
    from fastproxy.runtime.worker import StartError

    try:
        load_files(ident.cert, ident.key, ident.trust, ident.id)
    except SVIDError as exc:
        raise StartError(f"identity {ident.id}: {exc}") from None


@dataclass(frozen=True)
class Shared:
    """Memory every worker shares: anonymous MAP_SHARED mappings made before the fork."""

    breaker: mmap.mmap     # circuit-breaker slots
    metrics: mmap.mmap     # every metric series
    failed: mmap.mmap      # each worker's ring of recent failed requests
    workers: int

    @classmethod
    def create(cls, workers: int) -> "Shared":
        return cls(mmap.mmap(-1, SHARED_BYTES), mmap.mmap(-1, METRICS_BYTES),
                   mmap.mmap(-1, failed.shared_bytes(workers)), workers)


def check_access_log(config: Config) -> None:
    """Refuse to start when the access log file cannot be opened for appending."""
    target = config.proxy.access_log
    if target in ("stdout", "stderr", "off"):
        return
    import os

    from fastproxy.runtime.worker import StartError

    try:
        os.close(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644))
    except OSError as exc:
        raise StartError(f"{config.path}: proxy.access_log: cannot open {target}: "
                         f"{exc.strerror or exc}") from None


def check_files(config: Config) -> None:
    """What `run` refuses before binding, and `check` too: the identity files and the
    access log file. Raises StartError naming the problem."""
    check_identity(config)
    check_access_log(config)


def run(config: Config, workers: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT; 0 after a clean drain. Raises BindError."""
    count = workers or config.proxy.workers
    raise_fd_limit()
    check_files(config)
    per_worker = bind_listeners(config, count)
    shared = Shared.create(count)
    try:
        if count == 1:
            # one worker: this process is it (no supervisor to pay for)
            from fastproxy.runtime.worker import WorkerProcess

            return WorkerProcess(config, per_worker[0], shared).run()
        from fastproxy.runtime.supervisor import supervise

        return supervise(config, per_worker, shared)
    finally:
        close_all(per_worker)


__all__ = ["run", "check_files", "BindError"]
