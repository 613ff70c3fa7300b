"""One worker: a uvloop event loop serving every listener through the Cython core.

Owns the worker's life: configure the core, resolve endpoint names (and re-resolve
them), serve, reload on SIGHUP, and drain on SIGTERM/SIGINT. Nothing here runs per
request.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvloop

from fastproxy._core.proxy import Worker
from fastproxy.config import Config, ConfigError, load
from fastproxy.runtime.sockets import ADMIN

log = logging.getLogger("fastproxy")

DNS_REFRESH = 30.0   # seconds between re-resolutions of endpoint names


async def resolve_endpoints(loop: asyncio.AbstractEventLoop, core: Worker) -> None:
    """Give every cluster its current endpoint addresses (names resolved by DNS)."""
    for cluster in core.clusters.values():
        resolved: list[tuple[str, int]] = []
        failed = False
        for host, port, is_ip in cluster.addresses:
            if is_ip:
                resolved.append((host, port))
                continue
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.warning("cluster %s: cannot resolve %s: %s", cluster.name, host, exc)
                failed = True
                continue
            for info in infos:
                addr = (info[4][0], port)
                if addr not in resolved:
                    resolved.append(addr)
        if resolved or not failed:
            cluster.set_endpoints(resolved)


class IdentityError(Exception):
    """This workload's identity material is unusable at start; the message says why."""


class WorkerProcess:
    """Runs the core on one event loop until told to stop."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket], shared=None):
        self.config = config
        self.sockets = sockets
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.core = Worker(self.loop)
        if shared is not None:
            self.core.attach_shared(shared)
        self.core.configure(config)
        self.stopping = asyncio.Event()
        self.identity = None
        self.watcher = None
        self.ready = False
        self.not_ready_reason = "starting"
        self.background: list[asyncio.Task] = []

    def run(self) -> int:
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> int:
        loop = self.loop
        admin_sock = self.sockets.get(ADMIN)
        if admin_sock is not None:
            from fastproxy.admin import AdminServer

            admin = await AdminServer(self).serve(admin_sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self.not_ready_reason = "waiting for this workload's certificate"
        identity = loop.create_task(self._start_identity())
        stop = loop.create_task(self.stopping.wait())
        await asyncio.wait({identity, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not identity.done():   # told to stop before the first certificate came
            identity.cancel()
            for task in self.background:
                task.cancel()
            if admin_sock is not None:
                admin.close()
            return 0
        stop.cancel()
        identity.result()         # an unusable identity ends the worker here
        self.not_ready_reason = "starting listeners"
        await resolve_endpoints(loop, self.core)
        servers = []
        for listener in self.config.listeners:
            tls = None
            if listener.tls != "off":
                tls = self.identity.front_context(listener.tls == "mtls")
            server = await loop.create_server(
                self.core.protocol_factory(listener.name), sock=self.sockets[listener.name],
                backlog=4096, ssl=tls,
                ssl_handshake_timeout=listener.limits.header_timeout if tls else None)
            servers.append(server)
        dns = loop.create_task(self._refresh_dns())
        log.info("serving %s", ", ".join(f"{l.name} on {l.bind}" for l in self.config.listeners))
        self.ready = True
        await self.stopping.wait()
        self.ready = False
        self.not_ready_reason = "draining"

        log.info("draining (at most %gs)", self.config.proxy.drain_timeout)
        for server in servers:
            server.close()
        self.core.begin_drain()
        try:
            await asyncio.wait_for(asyncio.shield(self.core.drained),
                                   self.config.proxy.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("drain_timeout: closing %d connections",
                        self.core.open_connection_count())
        self.core.close_all()
        dns.cancel()
        for task in self.background:
            task.cancel()
        if admin_sock is not None:
            admin.close()
        return 0

    async def _start_identity(self) -> None:
        """Load (or obtain) this workload's certificate before any listener serves."""
        ident = self.config.identity
        if ident is None:
            return
        from fastproxy.identity.spiffe import id_allowed
        from fastproxy.identity.tls import FileWatcher, IdentityState, load_files
        from fastproxy.identity.svid import SVIDError

        state = IdentityState(own_id=ident.id)
        if ident.automatic:
            from fastproxy.identity.issuer import AutoIssuer

            first = asyncio.Event()

            def installed(material) -> None:
                state.install(material)
                first.set()

            issuer = AutoIssuer(ident.id, ident.ca_url, ident.token_file, ident.ca_trust,
                                ident.renew_at)
            self.background.append(self.loop.create_task(issuer.run(installed)))
            log.info("identity: waiting for a certificate from %s", ident.ca_url)
            await first.wait()
            self.background.append(self.loop.create_task(self._watch_expiry(state)))
        else:
            try:
                state.install(load_files(ident.cert, ident.key, ident.trust, ident.id))
            except SVIDError as exc:
                raise IdentityError(f"identity {ident.id}: {exc}") from None
            self.watcher = FileWatcher(state, ident.cert, ident.key, ident.trust)
            self.background.append(self.loop.create_task(self.watcher.run()))
        log.info("identity: %s, serial %x, valid until %s", ident.id, state.material.serial,
                 state.material.not_after.isoformat())
        self.identity = state
        self.core.identity = state
        self.core.id_allowed = id_allowed

    async def _refresh_dns(self) -> None:
        if not any(not is_ip for c in self.core.clusters.values() for _, _, is_ip in c.addresses):
            return
        while True:
            await asyncio.sleep(DNS_REFRESH)
            await resolve_endpoints(self.loop, self.core)

    async def _watch_expiry(self, state) -> None:
        while True:
            await asyncio.sleep(30)
            state.check_expiry()

    def reload(self) -> None:
        """SIGHUP: apply the configuration file again if it is valid; re-read identity files."""
        if self.watcher is not None:
            self.watcher.reload(force=True)
        try:
            config = load(self.config.path)
        except ConfigError as exc:
            log.error("reload refused, the running configuration stays:\n%s", exc)
            return
        if [(l.name, l.bind) for l in config.listeners] != \
                [(l.name, l.bind) for l in self.config.listeners]:
            log.error("reload refused: changing listeners needs a restart for now")
            return
        self.core.configure(config)
        self.config = config
        self.loop.create_task(resolve_endpoints(self.loop, self.core))
        log.info("configuration reloaded")
