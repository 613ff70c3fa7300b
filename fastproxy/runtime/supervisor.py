"""The supervising process of `workers = N`: forks the workers and keeps them running.

It never handles traffic. Signals are taken synchronously (sigtimedwait), so there is no
handler racing with fork: SIGTERM/SIGINT are forwarded and the workers drain (the first
worker, which serves the admin API, is told with SIGUSR2 when the others are done, so
/ready answers 503 for the whole drain), SIGUSR1 (reopen the access log) is forwarded,
SIGHUP is
forwarded for a reload (to every worker but the one that sent it: a worker's POST /reload
has reloaded that worker already), and a worker that dies unasked is restarted on the
same sockets. It follows reloads itself, so a restarted worker starts with the current
configuration, and it lets go of the sockets of listeners a reload removed.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time

from fastproxy.config import Config, ConfigError, file_signature, load

log = logging.getLogger("fastproxy")

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD}


def _start(config: Config, per_worker: list[dict[str, socket.socket]], index: int, shared) -> int:
    pid = os.fork()
    if pid:
        return pid
    # the worker: it keeps its own sockets only (another worker's inherited copy would
    # keep that socket accepting after its owner closed it in a drain)
    for other, sockets in enumerate(per_worker):
        if other != index:
            for sock in sockets.values():
                sock.close()
    sockets = dict(per_worker[index])
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        from fastproxy.runtime.worker import WorkerProcess

        code = WorkerProcess(config, sockets, shared, index, supervised=True).run()
    except BaseException:
        log.exception("worker %d failed", index)
    finally:
        logging.shutdown()
        os._exit(code)


def supervise(config: Config, per_worker: list[dict[str, socket.socket]], shared) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    workers: dict[int, int] = {}      # pid -> worker index
    started: dict[int, float] = {}    # index -> when it last started
    for index, sockets in enumerate(per_worker):
        workers[_start(config, per_worker, index, shared)] = index
        started[index] = time.monotonic()
    log.info("supervising %d workers (pids %s)", len(workers), " ".join(map(str, workers)))
    stopping_since = None
    seen = file_signature(config.path)
    while workers:
        timeout = 1.0
        if stopping_since is not None:
            # the admin's worker waits up to drain_timeout + 5 s for the others, after
            # its own drain
            grace = 2 * config.proxy.drain_timeout + 10.0
            if time.monotonic() - stopping_since > grace:
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
        info = signal.sigtimedwait(SIGNALS, timeout)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            if stopping_since is None:
                stopping_since = time.monotonic()
                for pid in workers:
                    os.kill(pid, signal.SIGTERM)
                # our copies of the listening sockets would keep the ports accepting
                # connections nobody serves while the workers drain
                for sockets in per_worker:
                    for sock in sockets.values():
                        sock.close()
        elif info is not None and info.si_signo == signal.SIGUSR1:
            for pid in workers:
                os.kill(pid, signal.SIGUSR1)
        elif info is not None and info.si_signo == signal.SIGHUP:
            config = _follow(config, per_worker)
            seen = file_signature(config.path)
            for pid in workers:
                if pid != info.si_pid:
                    os.kill(pid, signal.SIGHUP)
        elif file_signature(config.path) != seen:   # the workers watch the file themselves
            seen = file_signature(config.path)
            config = _follow(config, per_worker)
        # reap every worker that ended
        while workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                workers.clear()
                break
            if pid == 0:
                break
            index = workers.pop(pid, None)
            if stopping_since is not None:
                if list(workers.values()) == [0]:   # only the admin's worker is left
                    os.kill(next(iter(workers)), signal.SIGUSR2)
                continue
            if index is None:
                continue
            log.error("worker %d (pid %d) ended unexpectedly (%s); restarting it", index, pid,
                      _describe(status))
            if time.monotonic() - started[index] < 1.0:
                time.sleep(1.0)  # a worker that cannot stay up must not spin the CPU
            workers[_start(config, per_worker, index, shared)] = index
            started[index] = time.monotonic()
    return 0


def _follow(config: Config, per_worker: list[dict[str, socket.socket]]) -> Config:
    """The configuration after a reload (the workers report errors; this stays quiet)."""
    try:
        new = load(config.path)
    except ConfigError:
        return config
    if new.identity != config.identity or new.proxy.admin != config.proxy.admin:
        return config     # refused by the workers too
    keep = {l.name: (l.bind, l.tls) for l in new.listeners}
    for listener in config.listeners:
        if keep.get(listener.name) != (listener.bind, listener.tls):
            for sockets in per_worker:
                sock = sockets.pop(listener.name, None)
                if sock is not None:
                    sock.close()
    return new


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
