"""The supervising process of `workers = N`: forks the workers and keeps them running.

It never handles traffic. Signals are taken synchronously (sigtimedwait), so there is no
handler racing with fork: SIGTERM/SIGINT are forwarded and the workers drain, SIGHUP is
forwarded for a reload, and a worker that dies unasked is restarted on the same sockets.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time

from fastproxy.config import Config

log = logging.getLogger("fastproxy")

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}


def _start(config: Config, sockets: dict[str, socket.socket], index: int, shared) -> int:
    pid = os.fork()
    if pid:
        return pid
    # the worker
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        from fastproxy.runtime.worker import WorkerProcess

        code = WorkerProcess(config, sockets, shared).run()
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
        workers[_start(config, sockets, index, shared)] = index
        started[index] = time.monotonic()
    log.info("supervising %d workers (pids %s)", len(workers), " ".join(map(str, workers)))
    stopping_since = None
    while workers:
        timeout = 1.0
        if stopping_since is not None:
            grace = config.proxy.drain_timeout + 5.0
            if time.monotonic() - stopping_since > grace:
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
        info = signal.sigtimedwait(SIGNALS, timeout)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            if stopping_since is None:
                stopping_since = time.monotonic()
                for pid in workers:
                    os.kill(pid, signal.SIGTERM)
        elif info is not None and info.si_signo == signal.SIGHUP:
            for pid in workers:
                os.kill(pid, signal.SIGHUP)
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
            if index is None or stopping_since is not None:
                continue
            log.error("worker %d (pid %d) ended unexpectedly (%s); restarting it", index, pid,
                      _describe(status))
            if time.monotonic() - started[index] < 1.0:
                time.sleep(1.0)  # a worker that cannot stay up must not spin the CPU
            workers[_start(config, per_worker[index], index, shared)] = index
            started[index] = time.monotonic()
    return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
