"""One POST endpoint over HTTPS: the HTTP side of the control plane's small servers
(`fastproxy ca serve`, `fastproxy injector`). HTTP/1.1 with h11 on asyncio TLS, keep-alive,
bounded heads, bodies and time; a handler makes every decision.

A handler provides:
    path, name, max_body, content_type        the endpoint, its Server header, limits
    authorize(authorization) -> decision | context     from the head, before any body
    answer(context, body) -> decision                  status 200 is a success
    refusal(status, reason, detail, context) -> decision   for the endpoint's own errors
    log(decision, peer)                                 every decision, one line

A decision has `status`, `reason`, `detail` and `body`. Anything but 200 is answered with
`fastproxy-error: REASON`, the one-line body `fastproxy: REASON: DETAIL`, and a close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from http import HTTPStatus

import h11

__all__ = ["Endpoint", "serve", "run", "setup_logging", "server_context", "quote", "detail",
           "MAX_HEAD", "REQUEST_TIMEOUT", "IDLE_TIMEOUT"]

log = logging.getLogger("fastproxy.https")

MAX_HEAD = 8 * 1024           # request line and headers (431 over it)
REQUEST_TIMEOUT = 10.0        # a whole request (head and body), and the TLS handshake
IDLE_TIMEOUT = 30.0           # between keep-alive requests


def quote(text: str) -> str:
    """Log-safe: plain when printable ASCII without spaces or quotes, else repr()."""
    if text and all(33 <= ord(c) < 127 and c not in "\"'\\" for c in text):
        return text
    return repr(text)


def detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def server_context() -> ssl.SSLContext:
    """What the control plane's servers offer: TLS 1.2 at least, ALPN http/1.1; the
    caller loads the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Closed(Exception):
    """The peer went away, or the request was answered with a closing error."""


class Endpoint:
    """The HTTP side: one h11 connection per TLS connection, the handler for decisions."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.connections: set[asyncio.Task] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        peer = writer.get_extra_info("peername")
        peer_text = f"[{peer[0]}]:{peer[1]}" if peer and ":" in str(peer[0]) else (
            f"{peer[0]}:{peer[1]}" if peer else "-")
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while True:
                try:
                    keep = await self._one_request(conn, reader, writer, peer_text)
                except _Closed:
                    if conn.our_state is h11.MUST_CLOSE or conn.our_state is h11.DONE:
                        await self._linger(reader)
                    return
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, ssl.SSLError, OSError):
            return
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one connection take the server down
            log.exception("%s: unexpected error on the connection from %s", self.handler.name, peer_text)
        finally:
            if task is not None:
                self.connections.discard(task)
            writer.close()
            try:
                async with asyncio.timeout(2.0):
                    await writer.wait_closed()
            except Exception:
                pass

    async def _linger(self, reader: asyncio.StreamReader) -> None:
        """After an error answered before the request was read in full: discard what the
        client still sends (bounded), so that closing does not reset the connection and
        destroy the response before the client has read it."""
        try:
            async with asyncio.timeout(1.0):
                left = 4 * self.handler.max_body
                while left > 0:
                    data = await reader.read(16 * 1024)
                    if not data:
                        return
                    left -= len(data)
        except (TimeoutError, ConnectionError, ssl.SSLError, OSError):
            pass

    @staticmethod
    async def _event(conn: h11.Connection, reader: asyncio.StreamReader):
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await reader.read(16 * 1024)
            conn.receive_data(data)  # b"" means the peer closed

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                    headers: list[tuple[str, str]], body: bytes, *, head: bool = False) -> None:
        headers = headers + [("content-length", str(len(body))), ("server", self.handler.name)]
        data = conn.send(h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase))
        data += conn.send(h11.Data(data=body)) if body and not head else b""
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()

    async def _error(self, conn, writer, peer: str, decision, *, head: bool = False) -> None:
        self.handler.log(decision, peer)
        headers = [("content-type", "text/plain; charset=utf-8"), ("fastproxy-error", decision.reason),
                   ("connection", "close")]
        if decision.status == 401:
            headers.append(("www-authenticate", f'Bearer realm="{self.handler.name}"'))
        elif decision.status == 405:
            headers.append(("allow", "POST"))
        body = f"fastproxy: {decision.reason}: {decision.detail}\n".encode("utf-8", "replace")
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(conn, writer, decision.status, headers, body, head=head)
        raise _Closed

    def _refusal(self, status: int, reason: str, text: str, context=None):
        return self.handler.refusal(status, reason, text, context)

    async def _one_request(self, conn: h11.Connection, reader, writer, peer: str) -> bool:
        """Answers one request; True when the connection may carry another."""
        # Waiting for a request: the idle timeout; once bytes came, the request timeout.
        first = conn.their_state is h11.IDLE and not conn.trailing_data[0]
        try:
            async with asyncio.timeout(IDLE_TIMEOUT if first else REQUEST_TIMEOUT) as deadline:
                if first:
                    data = await reader.read(16 * 1024)
                    conn.receive_data(data)
                    deadline.reschedule(asyncio.get_running_loop().time() + REQUEST_TIMEOUT)
                return await self._request(conn, reader, writer, peer)
        except TimeoutError:
            if conn.their_state is h11.IDLE and conn.our_state is h11.IDLE:
                raise _Closed from None  # an idle keep-alive connection: just close
            await self._error(conn, writer, peer, self._refusal(
                408, "request_timeout", f"request not complete within {REQUEST_TIMEOUT:g}s"))
        return False

    async def _request(self, conn: h11.Connection, reader, writer, peer: str) -> bool:
        handler = self.handler
        try:
            event = await self._event(conn, reader)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint or 400
            reason = {431: "header_too_large", 501: "not_implemented"}.get(status, "bad_request")
            await self._error(conn, writer, peer, self._refusal(status, reason, detail(exc)))
        if not isinstance(event, h11.Request):   # ConnectionClosed
            raise _Closed
        path = event.target.decode("latin-1").split("?", 1)[0]
        method = event.method.decode("latin-1")
        if path != handler.path:
            await self._error(conn, writer, peer, self._refusal(404, "not_found", f"no such endpoint {quote(path)}"),
                              head=method == "HEAD")
        if method != "POST":
            await self._error(conn, writer, peer, self._refusal(
                405, "method_not_allowed", f"{quote(method)} {handler.path}: only POST"), head=method == "HEAD")
        headers = {}
        for name, value in event.headers:
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        length = headers.get("content-length")
        if length is not None and int(length) > handler.max_body:  # h11 has checked the syntax
            await self._error(conn, writer, peer, self._refusal(
                413, "payload_too_large", f"body of {length} bytes is over {handler.max_body}"))
        context = handler.authorize(headers.get("authorization"))
        if getattr(context, "status", 200) != 200:
            await self._error(conn, writer, peer, context)
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")))
        body = bytearray()
        while True:
            try:
                event = await self._event(conn, reader)
            except h11.RemoteProtocolError as exc:
                await self._error(conn, writer, peer, self._refusal(400, "bad_request", detail(exc), context))
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > handler.max_body:
                    await self._error(conn, writer, peer, self._refusal(
                        413, "payload_too_large", f"body over {handler.max_body} bytes", context))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed in the middle of the body
                raise _Closed
        decision = handler.answer(context, bytes(body))
        if decision.status != 200:
            await self._error(conn, writer, peer, decision)
        handler.log(decision, peer)
        await self._send(conn, writer, 200, [("content-type", handler.content_type)], decision.body)
        return True


async def serve(handler, bind, context: ssl.SSLContext, *, command: str, ready=None,
                stop: asyncio.Event | None = None) -> int:
    """Serves `handler` on `bind` until `stop` is set (or SIGTERM/SIGINT when `stop` is
    None); 0, or 1 when the address cannot be bound (one line naming it). `ready(server)`
    is called once it listens."""
    loop = asyncio.get_running_loop()
    endpoint = Endpoint(handler)
    try:
        server = await asyncio.start_server(endpoint.handle, bind.host, bind.port, ssl=context,
                                            ssl_handshake_timeout=REQUEST_TIMEOUT, reuse_address=True,
                                            limit=64 * 1024)
    except OSError as exc:
        print(f"fastproxy: {command}: cannot bind {bind}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    own_stop = stop is None
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        server.close()
        for task in list(endpoint.connections):
            task.cancel()
        if endpoint.connections:
            await asyncio.wait(list(endpoint.connections), timeout=2.0)
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return 0


def setup_logging(program: str) -> None:
    """Log lines on stderr, at FASTPROXY_LOG_LEVEL (default INFO), named after `program`."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("FASTPROXY_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                            format=f"%(asctime)s {program}[%(process)d] %(levelname)s %(message)s")


def run(main) -> int:
    """Runs the coroutine `main` on uvloop until it returns; Ctrl-C is exit 0."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(main)
        except KeyboardInterrupt:
            return 0
