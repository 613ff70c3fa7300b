"""One worker: a uvloop event loop serving every listener through the Cython core.

Owns the worker's life: configure the core, resolve endpoint names (and re-resolve
them), serve, reload (SIGHUP, the admin's POST /reload, the file changing), drain on
SIGTERM/SIGINT, and the observability plumbing around the core: the record drain
(access log, spans, failed requests) and the per-worker gauges. Nothing here runs per
request.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import socket
import time

import uvloop

from fastproxy._core.proxy import Port, Worker
from fastproxy.config import Config, ConfigError, file_signature, load
from fastproxy.config.compile import compile_snapshot
from fastproxy.observe import metrics
from fastproxy.observe.failed import FailedRing
from fastproxy.observe.records import Drain
from fastproxy.runtime.sockets import ADMIN, BindError, bind_one

log = logging.getLogger("fastproxy")

DNS_REFRESH = 30.0     # seconds between re-resolutions of endpoint names
FILE_POLL = 1.0        # seconds between looks at the configuration file (changes apply within 5 s)
GAUGES_EVERY = 1.0     # seconds between publications of this worker's gauges
BACKLOG = 4096         # connections the kernel queues for a listener (as sockets.py listens)
PAUSED_BACKLOG = 64    # ... while descriptors are short


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


class StartError(Exception):
    """The worker cannot start (unusable identity material, an access log file that cannot
    be opened); the message says why."""




class ReloadRefused(Exception):
    """A reload that cannot be applied; the running configuration stays."""


class Serving:
    """One listener's socket and server in this worker. The server serves a duplicate of
    the socket: closing it stops accepting, and the socket itself stays listening (new
    connections wait in its backlog) until a new server takes it up again."""

    def __init__(self, listener, sock: socket.socket, port: Port):
        self.listener = listener
        self.sock = sock
        self.port = port
        self.server = None
        self.resuming = False

    def same_socket(self, listener) -> bool:
        return (listener.bind, listener.tls) == (self.listener.bind, self.listener.tls)


class WorkerProcess:
    """Runs the core on one event loop until told to stop."""

    def __init__(self, config: Config, sockets: dict[str, socket.socket], shared=None,
                 index: int = 0, supervised: bool = False):
        self.config = config
        self.sockets = sockets
        self.index = index
        self.supervised = supervised       # under a supervisor (workers > 1)
        self.supervisor = os.getppid() if supervised else None
        self.loop = uvloop.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.core = Worker(self.loop)
        self.core.index = index
        self.core.on_accepting = lambda: self.loop.call_soon(self._follow_admission)
        if shared is not None:
            self.core.attach_shared(shared.breaker, shared.metrics)
        self.failed = FailedRing(shared.failed if shared is not None else None, index=index)
        self.core.install(compile_snapshot(config))
        self.stopping = asyncio.Event()
        self.identity = None
        self.watcher = None
        self.ready = False
        self.not_ready_reason = "starting"
        self.background: list[asyncio.Task] = []
        self.serving: dict[str, Serving] = {}
        self.generation = 1
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self.last_refused: tuple[float, str] | None = None   # kept after later successes
        self.file_seen = file_signature(config.path)
        self.access_log = None
        self.old_logs: list = []        # access logs and exporters replaced by a reload: their
        self.old_exporters: list = []   # counts go on counting in the metrics
        self.exporter = None
        self.drain = Drain(self.core, self.failed)
        self.published: dict[str, int] = {}
        self.gauges: set[str] = set()       # gauge series this worker published last time
        self.reloading = asyncio.Lock()     # SIGHUP, POST /reload and the file watcher
        if index == 0:   # reloads are counted once, by the first worker
            for result in ("success", "failure"):
                self.core.metrics.add(metrics.key("fastproxy_config_reloads_total", result), 0, 0)

    def run(self) -> int:
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> int:
        loop = self.loop
        admin_sock = self.sockets.get(ADMIN)
        admin = None
        if admin_sock is not None:
            from fastproxy.admin import AdminServer

            admin = await AdminServer(self).serve(admin_sock)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        others_done = asyncio.Event()     # supervised: the other workers have exited
        loop.add_signal_handler(signal.SIGUSR2, others_done.set)
        loop.add_signal_handler(signal.SIGUSR1, self.reopen_log)
        try:
            self._observe(self.config)
        except ReloadRefused as exc:
            raise StartError(str(exc)) from None
        self.background.append(loop.create_task(self.drain.run()))
        self.background.append(loop.create_task(self._publish_gauges()))
        self.not_ready_reason = "waiting for this workload's certificate"
        identity = loop.create_task(self._start_identity())
        stop = loop.create_task(self.stopping.wait())
        await asyncio.wait({identity, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not identity.done():   # told to stop before the first certificate came
            identity.cancel()
            await self._finish(admin)
            return 0
        stop.cancel()
        identity.result()         # an unusable identity ends the worker here
        self.not_ready_reason = "starting listeners"
        await resolve_endpoints(loop, self.core)
        async with self.reloading:    # a reload meanwhile waits, then sees the listeners
            for listener in self.config.listeners:
                sock = self.sockets.get(listener.name) or bind_one(listener, probe=False)
                self.serving[listener.name] = await self._serve(listener, sock)
            self._count_descriptors()
            self.ready = True
        self.background.append(loop.create_task(self._refresh_dns()))
        self.background.append(loop.create_task(self._watch_file()))
        log.info("serving %s", ", ".join(f"{l.name} on {l.bind}" for l in self.config.listeners))
        await self.stopping.wait()
        self.ready = False
        self.not_ready_reason = "draining"

        log.info("draining (at most %gs)", self.config.proxy.drain_timeout)
        for serving in self.serving.values():
            _stop_listening(serving)
        self.core.begin_drain()
        try:
            await asyncio.wait_for(asyncio.shield(self.core.drained),
                                   self.config.proxy.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("drain_timeout: closing %d connections",
                        self.core.open_connection_count())
        self.core.close_all()
        if admin is not None and self.supervised:
            # the admin answers (/ready 503) until every worker has drained
            try:
                await asyncio.wait_for(others_done.wait(), self.config.proxy.drain_timeout + 5)
            except asyncio.TimeoutError:
                pass
        await self._finish(admin)
        return 0

    async def _serve(self, listener, sock: socket.socket) -> Serving:
        serving = Serving(listener, sock, Port(listener.name))
        if self.core.accepting:
            await self._accept(serving)
        return serving

    async def _accept(self, serving: Serving) -> None:
        # TLS is the core's (its protocol factory wraps each connection in a TLSLink)
        serving.server = await self.loop.create_server(
            self.core.protocol_factory(serving.port), sock=serving.sock.dup(), backlog=BACKLOG)

    def _follow_admission(self) -> None:
        """The core stopped or resumed accepting (max_connections, file descriptors)."""
        if not self.ready:     # starting (the listeners open later) or draining
            return
        accepting = self.core.accepting
        for serving in self.serving.values():
            if not accepting and serving.server is not None:
                serving.server.close()
                serving.server = None
                if self.core.short_of_descriptors:
                    # a short backlog: resuming must not accept more than the reserve holds
                    serving.sock.listen(PAUSED_BACKLOG)
            elif accepting and serving.server is None and not serving.resuming:
                serving.resuming = True
                self.loop.create_task(self._resume(serving))

    async def _resume(self, serving: Serving) -> None:
        try:
            await self._accept(serving)
        except OSError as exc:
            log.error("listener %s: cannot accept again: %s", serving.listener.name, exc)
            return
        finally:
            serving.resuming = False
        if not self.ready or self.serving.get(serving.listener.name) is not serving:
            _stop_listening(serving)      # drained or reloaded away meanwhile
        elif not self.core.accepting:
            self._follow_admission()      # paused again meanwhile

    def _count_descriptors(self) -> None:
        """Tell the core how many descriptors it may use for sockets."""
        try:
            in_use = len(os.listdir("/proc/self/fd")) - 1   # less the listing's own
        except OSError:
            return     # not Linux: no limit known, none enforced
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit != resource.RLIM_INFINITY:
            self.core.set_descriptor_limit(limit, in_use - self.core.sockets)

    def reopen_log(self) -> None:
        """SIGUSR1 (as nginx): reopen the access log file, after logrotate moved it."""
        if self.access_log is not None and self.access_log.target not in ("stdout", "stderr"):
            from fastproxy.observe.accesslog import AccessLog

            self.drain.write_log()
            try:
                new = AccessLog(self.access_log.target)
            except OSError as exc:
                log.error("access log %s: cannot reopen (%s); writing on to the open file",
                          self.access_log.target, exc.strerror or exc)
                return
            old, self.access_log = self.access_log, new
            self.drain.access_log = self.access_log
            old.close()
            self.old_logs.append(old)
            log.info("access log %s reopened", self.access_log.target)

    async def _finish(self, admin) -> None:
        """Stop the background work; what is recorded so far still goes out."""
        for task in self.background:
            task.cancel()
        self.drain.flush()
        if self.exporter is not None:
            await self.exporter.close(2.0)
        if self.access_log is not None:
            self.access_log.close()
        if admin is not None:
            admin.close()

    # -- observability ---------------------------------------------------------------------
    def _observe(self, config: Config) -> None:
        """Open (or re-open, after a reload changed them) the access log and the exporter.
        Raises ReloadRefused when the access log cannot be opened (nothing changed then)."""
        target = config.proxy.access_log
        if (self.access_log.target if self.access_log else "off") != target:
            new = None
            if target != "off":
                from fastproxy.observe.accesslog import AccessLog

                try:
                    new = AccessLog(target)
                except OSError as exc:
                    raise ReloadRefused(f"{config.path}: proxy.access_log: cannot open {target}: "
                                        f"{exc.strerror or exc}") from None
            old, self.access_log = self.access_log, new
            if old is not None:
                self.drain.write_log()     # what was logged so far goes to the old target
                old.close()
                self.old_logs.append(old)
        address = config.tracing.export_address if config.tracing.propagate else None
        current = (self.exporter.host, self.exporter.port, self.exporter.service_name) \
            if self.exporter is not None else None
        wanted = (address.host, address.port, config.tracing.service_name) if address else None
        if current != wanted:
            old_exporter = self.exporter
            self.exporter = None
            if wanted is not None:
                from fastproxy.observe.tracing import SpanExporter

                self.exporter = SpanExporter(*wanted)
                self.background.append(self.loop.create_task(self.exporter.run()))
            if old_exporter is not None:
                self.loop.create_task(old_exporter.close(2.0))
                self.old_exporters.append(old_exporter)
        self.drain.access_log = self.access_log
        self.drain.exporter = self.exporter

    def counter_totals(self) -> dict[tuple[str, ...], int]:
        """This worker's counters kept in Python: (metric name, *label values) -> total."""
        logs = [o for o in (self.access_log, *self.old_logs) if o is not None]
        exporters = [o for o in (self.exporter, *self.old_exporters) if o is not None]
        totals = {
            ("fastproxy_records_dropped_total",): self.core.records_dropped,
            ("fastproxy_access_log_dropped_total",):
                self.core.log.dropped + sum(o.dropped for o in logs),
            ("fastproxy_spans_exported_total",): sum(o.exported for o in exporters),
            ("fastproxy_spans_dropped_total",): sum(o.dropped for o in exporters),
            ("fastproxy_span_export_failures_total",): sum(o.export_failures for o in exporters),
        }
        for reason, times in self.core.accept_pauses.items():
            totals["fastproxy_accept_paused_total", reason] = times
        for cluster, times in self.core.retry_budget_denials.items():
            totals["fastproxy_retry_budget_exhausted_total", cluster] = times
        return totals

    def publish_gauges(self) -> None:
        """This worker's share of the gauges and of the counters Python keeps (added as
        deltas, so a restarted worker's count goes on from its predecessor's)."""
        table, i = self.core.metrics, self.index
        gauges: dict[str, int] = {}
        for cluster in self.core.clusters.values():
            gauges[metrics.key("fastproxy_upstream_connections", cluster.name, "active", worker=i)] = \
                sum(ep.active for ep in cluster.endpoints)
            gauges[metrics.key("fastproxy_upstream_connections", cluster.name, "idle", worker=i)] = \
                sum(ep.idle_count for ep in cluster.endpoints)
            gauges[metrics.key("fastproxy_upstream_connections", cluster.name, "http2", worker=i)] = \
                sum(ep.http2_count for ep in cluster.endpoints)
        for name in self.core.listeners:
            gauges[metrics.key("fastproxy_downstream_connections", name, worker=i)] = 0
        for name in self.core.connection_listeners():
            key = metrics.key("fastproxy_downstream_connections", name, worker=i)
            gauges[key] = gauges.get(key, 0) + 1
        gauges[metrics.key("fastproxy_downstream_connections_waiting", worker=i)] = \
            self.core.waiting_count
        for key in self.gauges - gauges.keys():   # a reload removed its cluster or listener
            gauges[key] = 0
        for key, value in gauges.items():
            table.set(key, value)
        self.gauges = {key for key, value in gauges.items() if value}
        for series, total in self.counter_totals().items():
            key = metrics.key(*series, worker=i)
            delta = total - self.published.get(key, 0)
            if delta > 0:
                table.add(key, 0, delta)
                self.published[key] = total

    async def _publish_gauges(self) -> None:
        while True:
            self.publish_gauges()
            await asyncio.sleep(GAUGES_EVERY)

    # -- identity ----------------------------------------------------------------------------
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
                raise StartError(f"identity {ident.id}: {exc}") from None
            self.watcher = FileWatcher(state, ident.cert, ident.key, ident.trust)
            self.background.append(self.loop.create_task(self.watcher.run()))
        log.info("identity: %s, serial %x, valid until %s", ident.id, state.material.serial,
                 state.material.not_after.isoformat())
        self.identity = state
        self.core.identity = state
        self.core.id_allowed = id_allowed

    async def _watch_expiry(self, state) -> None:
        while True:
            await asyncio.sleep(30)
            state.check_expiry()

    async def _refresh_dns(self) -> None:
        while True:
            await asyncio.sleep(DNS_REFRESH)
            await resolve_endpoints(self.loop, self.core)

    # -- reload ------------------------------------------------------------------------------
    def _sighup(self) -> None:
        if self.watcher is not None:
            self.watcher.reload(force=True)
        self.loop.create_task(self.reload("SIGHUP"))

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(FILE_POLL)
            seen = file_signature(self.config.path)
            if seen is not None and seen != self.file_seen:
                await self.reload("the file changed")

    async def reload(self, why: str) -> dict:
        """Apply the configuration file again (docs/operations.md): parsed, validated and compiled
        first; anything wrong leaves the running configuration in force. The result is
        what POST /reload answers. One reload at a time."""
        async with self.reloading:
            return await self._reload(why)

    async def _reload(self, why: str) -> dict:
        self.file_seen = file_signature(self.config.path)
        try:
            config = load(self.config.path)
            await self._apply(config)
        except (ConfigError, ReloadRefused) as exc:
            self.last_error = str(exc)
            self.last_refused = (time.time(), self.last_error)
            self._count_reload("failure")
            log.error("reload (%s) refused, the running configuration stays:\n%s", why, exc)
            return {"result": "failure", "error": str(exc)}
        self.generation += 1
        self.loaded_at = time.time()
        self.last_error = None
        self._count_reload("success")
        log.info("configuration reloaded (%s): generation %d", why, self.generation)
        return {"result": "success", "generation": self.generation}

    def _count_reload(self, result: str) -> None:
        if self.index == 0:
            self.core.metrics.add(metrics.key("fastproxy_config_reloads_total", result))

    async def _apply(self, config: Config) -> None:
        old = self.config
        if config.identity != old.identity:
            raise ReloadRefused(f"{config.path}: identity: changing [identity] needs a restart")
        if config.proxy.admin != old.proxy.admin:
            raise ReloadRefused(f"{config.path}: proxy.admin: changing the admin address "
                                "needs a restart")
        if config.proxy.workers != old.proxy.workers:
            log.warning("reload: proxy.workers changes at the next restart")
        started = self.ready   # listeners open only once the worker serves
        # new sockets and files first: a failure must leave everything as it was
        fresh: dict[str, socket.socket] = {}
        ours = {serving.listener.bind for serving in self.serving.values()}
        try:
            if started:
                for listener in config.listeners:
                    current = self.serving.get(listener.name)
                    if current is None or not current.same_socket(listener):
                        # the probe (is anyone else there?) cannot tell our own sockets, nor
                        # the other workers binding the same address at the same time
                        fresh[listener.name] = bind_one(
                            listener, probe=not self.supervised and listener.bind not in ours)
            self._observe(config)
        except (BindError, ReloadRefused) as exc:
            for sock in fresh.values():
                sock.close()
            raise ReloadRefused(f"{config.path}: {exc}" if isinstance(exc, BindError)
                                else str(exc)) from None
        if not started:
            # still starting: the sockets bound for listeners this file removes or moves
            # must not stay listening with nobody to accept (the new ones are bound at start)
            binds = {listener.name: listener.bind for listener in config.listeners}
            for listener in self.config.listeners:
                if binds.get(listener.name) != listener.bind and listener.name in self.sockets:
                    _shut(self.sockets.pop(listener.name))
        self.core.install(compile_snapshot(config))   # requests in flight keep theirs
        self.config = config
        self.loop.create_task(resolve_endpoints(self.loop, self.core))
        if not started:
            return
        names = {listener.name for listener in config.listeners}
        for name, serving in list(self.serving.items()):
            if name not in names or name in fresh:
                self._close_listener(serving)
                del self.serving[name]
        for listener in config.listeners:
            if listener.name in fresh:
                self.serving[listener.name] = await self._serve(listener, fresh[listener.name])
                log.info("listener %s: serving on %s", listener.name, listener.bind)
        self._count_descriptors()

    def _close_listener(self, serving: Serving) -> None:
        """A removed (or moved) listener: no new connections; open ones wind down."""
        _stop_listening(serving)
        self.sockets.pop(serving.listener.name, None)
        self.core.close_port(serving.port)
        log.info("listener %s on %s: closed; its connections finish what they carry",
                 serving.listener.name, serving.listener.bind)

    # -- lifecycle requests from the admin API -------------------------------------------
    async def admin_reload(self) -> dict:
        """POST /reload: this worker now; the others through the supervisor."""
        result = await self.reload("POST /reload")
        if result["result"] == "success":
            self._tell_supervisor(signal.SIGHUP)
        return result

    def admin_shutdown(self) -> None:
        """POST /shutdown: drain every worker and exit."""
        if not self._tell_supervisor(signal.SIGTERM):
            self.stopping.set()

    def _tell_supervisor(self, sig: int) -> bool:
        """Signal the supervisor, if there is one and it is still ours."""
        if self.supervisor is None or os.getppid() != self.supervisor:
            return False
        os.kill(self.supervisor, sig)
        return True


def _stop_listening(serving: Serving) -> None:
    """Close a listener's socket for good."""
    if serving.server is not None:
        serving.server.close()
        serving.server = None
    _shut(serving.sock)


def _shut(sock: socket.socket) -> None:
    """shutdown() stops the socket itself listening, also for the copy the supervisor
    holds; close() alone would leave that copy accepting connections nobody serves."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
