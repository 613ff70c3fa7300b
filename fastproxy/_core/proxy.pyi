"""Type stubs for the Cython forwarding core (fastproxy/_core/proxy.pyx)."""
import asyncio
from typing import Callable

from fastproxy.config import Config

class Endpoint:
    host: str
    port: int
    active: int
    idle_timeout: float
    @property
    def idle_count(self) -> int: ...
    def __init__(self, host: str, port: int) -> None: ...
    def close_idle(self) -> None: ...

class Cluster:
    name: str
    endpoints: list[Endpoint]
    connect_timeout: float
    idle_timeout: float
    addresses: tuple[tuple[str, int, bool], ...]
    def __init__(self, name: str) -> None: ...
    def set_endpoints(self, addresses: list[tuple[str, int]]) -> None: ...

class Worker:
    loop: asyncio.AbstractEventLoop
    listeners: dict[str, object]
    clusters: dict[str, Cluster]
    connections: set[object]
    max_connections: int
    draining: bool
    drained: asyncio.Future[None] | None
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def configure(self, config: Config) -> None: ...
    def protocol_factory(self, listener: str) -> Callable[[], asyncio.Protocol]: ...
    def begin_drain(self) -> None: ...
    def close_all(self) -> None: ...
    def open_connection_count(self) -> int: ...
