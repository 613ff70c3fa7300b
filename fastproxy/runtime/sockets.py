"""Listening sockets, bound before any worker starts so a bind failure names its address.

Each worker gets its own socket per listener, all bound with SO_REUSEPORT, so the kernel
spreads connections across workers. The supervisor keeps its copies: a restarted worker
takes over its predecessor's socket, and connections queued meanwhile are not lost.
"""
from __future__ import annotations

import socket

from fastproxy.config import Config


class BindError(Exception):
    """A listener could not bind; the message names the listener and the address."""


def _open(family: int, sockaddr: tuple, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listeners(config: Config, workers: int) -> list[dict[str, socket.socket]]:
    """For each worker, {listener name: listening socket}. Raises BindError."""
    per_worker: list[dict[str, socket.socket]] = [{} for _ in range(workers)]
    try:
        for listener in config.listeners:
            where = f"{listener.bind} (listener {listener.name!r})"
            try:
                infos = socket.getaddrinfo(listener.bind.host, listener.bind.port,
                                           type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            except OSError as exc:
                raise BindError(f"cannot resolve {where}: {exc.strerror or exc}") from None
            family, _, _, _, sockaddr = infos[0]
            try:
                # A probe without SO_REUSEPORT: fails if anyone (even another proxy that
                # set SO_REUSEPORT) already listens here.
                _open(family, sockaddr, reuse_port=False).close()
                for sockets in per_worker:
                    sock = _open(family, sockaddr, reuse_port=True)
                    sockets[listener.name] = sock
                    sock.listen(4096)
                    sock.setblocking(False)
            except OSError as exc:
                raise BindError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except BindError:
        close_all(per_worker)
        raise
    return per_worker


def close_all(per_worker: list[dict[str, socket.socket]]) -> None:
    for sockets in per_worker:
        for sock in sockets.values():
            sock.close()
