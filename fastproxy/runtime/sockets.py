"""Listening sockets, bound before any worker starts so a bind failure names its address.

Each worker gets its own socket per listener, all bound with SO_REUSEPORT, so the kernel
spreads connections across workers. The supervisor keeps its copies: a restarted worker
takes over its predecessor's socket, and connections queued meanwhile are not lost.
"""
from __future__ import annotations

import socket

from fastproxy.config import Config


ADMIN = ""   # the admin socket's key (listener names are never empty)


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


def _bind(address, where: str, count: int, probe: bool = True) -> list[socket.socket]:
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise BindError(f"cannot resolve {where}: {exc.strerror or exc}") from None
    family, _, _, _, sockaddr = infos[0]
    socks: list[socket.socket] = []
    try:
        # A probe without SO_REUSEPORT: fails if anyone (even another proxy that set
        # SO_REUSEPORT) already listens here.
        if probe:
            _open(family, sockaddr, reuse_port=False).close()
        for _ in range(count):
            sock = _open(family, sockaddr, reuse_port=True)
            socks.append(sock)
            sock.listen(4096)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise BindError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    return socks


def bind_listeners(config: Config, workers: int) -> list[dict[str, socket.socket]]:
    """For each worker, {listener name: listening socket}; the admin socket goes to the
    first worker under ADMIN. Raises BindError."""
    per_worker: list[dict[str, socket.socket]] = [{} for _ in range(workers)]
    try:
        for listener in config.listeners:
            socks = _bind(listener.bind, f"{listener.bind} (listener {listener.name!r})", workers)
            for sockets, sock in zip(per_worker, socks):
                sockets[listener.name] = sock
        if config.proxy.admin is not None:
            per_worker[0][ADMIN] = _bind(config.proxy.admin, f"{config.proxy.admin} (admin)", 1)[0]
    except BindError:
        close_all(per_worker)
        raise
    return per_worker


def bind_one(listener, probe: bool = True) -> socket.socket:
    """One worker's socket for a listener opened after the start (a reload added it, or a
    restarted worker needs it). Without probe, it may join sockets of the other workers
    on the same address. Raises BindError."""
    return _bind(listener.bind, f"{listener.bind} (listener {listener.name!r})", 1, probe)[0]


def close_all(per_worker: list[dict[str, socket.socket]]) -> None:
    for sockets in per_worker:
        for sock in sockets.values():
            sock.close()
