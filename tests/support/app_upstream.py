"""An aiohttp upstream application for end-to-end tests. Run as a program:

    python app_upstream.py --listen NAME=PORT [--listen NAME2=PORT2 ...]

Every listen address serves the same app; each response carries `x-served-by: NAME` so a
routing test can tell clusters apart with a single process.

Endpoints (any method unless noted):
  /echo                JSON: served_by, method, path, raw_path, version, headers (list of
                       [name, value] exactly as received, in order), body_len, body_sha256,
                       peer_port (the proxy's source port: one per upstream connection)
  /status/N            status N; no body for 1xx/204/304, else "status N"
  /bytes/N             N bytes of a fixed pattern, streamed in 256 KiB writes; ?chunked=1
                       for chunked framing; ?tag=T publishes progress (see /_ctl)
  /chunked             "alpha-beta-gamma" in three chunks
  /slow                ?delay=S sleeps S seconds; ?hold=T waits for POST /_ctl/release/T;
                       then answers "slow done"; ?tag=T marks the request as seen
  /drip                ?n=N&delay=S: content-length N*10, sends 10 bytes every S seconds
  /stream-upload       reads the body in 64 KiB pieces (?hold=T: not before release,
                       ?delay=S between pieces); JSON body_len, body_sha256
  /ws                  WebSocket echo (text and binary)
  /upgrade-refused     answers an Upgrade request with a plain 200 "no upgrade"
Control, used by the tests directly (never through the proxy):
  POST /_ctl/mode/NAME/MODE  switches how listen address NAME answers every request
                       outside /_ctl (the switch applies to requests arriving after it):
                         ok     as described above (the initial mode)
                         fail   reads the body, answers ?status=S (default 500) "failing NAME"
                         hang   reads the body, never answers (until the peer goes)
                         reset  reads the body, aborts the connection (RST), no response byte
                         close  reads the body, closes the connection (FIN), no response byte
  GET /_ctl/hits        {"NAME": requests that arrived on NAME outside /_ctl, ...}
  GET /_ctl/log         {"log": [[NAME, method, path_qs], ...]} in arrival order
  GET /_ctl/progress/T  {"sent": bytes written by /bytes, "done": bool}
  GET /_ctl/received/T  {"received": bytes read by /stream-upload}
  GET /_ctl/seen/T      {"seen": bool}
  POST /_ctl/release/T  releases ?hold=T
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import struct

from aiohttp import WSMsgType, web

PATTERN = bytes(range(256)) * 1024  # 256 KiB


def pattern_bytes(n: int) -> bytes:
    """The first n bytes of the /bytes body (for the tests to compare against)."""
    reps = n // len(PATTERN) + 1
    return (PATTERN * reps)[:n]


def pattern_sha256(n: int) -> str:
    """The SHA-256 (hex) of the first n bytes of the /bytes body, without making them."""
    h = hashlib.sha256()
    full, rest = divmod(n, len(PATTERN))
    for _ in range(full):
        h.update(PATTERN)
    h.update(PATTERN[:rest])
    return h.hexdigest()


class State:
    def __init__(self):
        self.progress: dict[str, dict] = {}
        self.received: dict[str, int] = {}
        self.seen: set[str] = set()
        self.release: dict[str, asyncio.Event] = {}
        self.modes: dict[str, tuple[str, int]] = {}   # name -> (mode, status); absent: ok
        self.hits: dict[str, int] = {}
        self.log: list[list[str]] = []

    def event(self, tag: str) -> asyncio.Event:
        return self.release.setdefault(tag, asyncio.Event())


MODES = ("ok", "fail", "hang", "reset", "close")


async def misbehave(request: web.Request, name: str, mode: str, code: int):
    """The non-ok modes (see the module docstring)."""
    await request.read()
    if mode == "fail":
        return web.Response(status=code, text=f"failing {name}", headers={"x-served-by": name})
    transport = request.transport
    if transport is None:
        raise asyncio.CancelledError
    if mode == "hang":
        while not transport.is_closing():
            await asyncio.sleep(0.05)
        raise asyncio.CancelledError
    if mode == "reset":
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()
    raise asyncio.CancelledError  # nothing more to send on this connection


def served_by_middleware(names: dict[int, str]):
    @web.middleware
    async def mw(request, handler):
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        name = names.get(sock[1], "?") if sock else "?"
        request["served_by"] = name
        if not request.path.startswith("/_ctl/"):
            st: State = request.app["state"]
            st.hits[name] = st.hits.get(name, 0) + 1
            st.log.append([name, request.method, request.path_qs])
            mode, code = st.modes.get(name, ("ok", 500))
            if mode != "ok":
                return await misbehave(request, name, mode, code)
        resp = await handler(request)
        if not isinstance(resp, web.WebSocketResponse) and not resp.prepared:
            resp.headers["x-served-by"] = name
        return resp
    return mw


async def echo(request: web.Request):
    body = await request.read()
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.json_response({
        "served_by": request["served_by"],
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "version": f"{request.version.major}.{request.version.minor}",
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_len": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "peer_port": peer[1] if peer else None,
    })


async def status(request: web.Request):
    code = int(request.match_info["code"])
    if code in (204, 304) or code < 200:
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}")


async def bytes_(request: web.Request):
    n = int(request.match_info["n"])
    tag = request.query.get("tag")
    st: State = request.app["state"]
    prog = st.progress.setdefault(tag, {"sent": 0, "done": False}) if tag else None
    resp = web.StreamResponse()
    resp.headers["x-served-by"] = request["served_by"]
    if request.query.get("chunked"):
        resp.enable_chunked_encoding()
    else:
        resp.content_length = n
    resp.content_type = "application/octet-stream"
    await resp.prepare(request)
    if request.method == "HEAD":
        return resp
    view = memoryview(PATTERN)
    left = n
    while left > 0:
        piece = view[: min(left, len(PATTERN))]
        await resp.write(piece)
        left -= len(piece)
        if prog is not None:
            prog["sent"] += len(piece)
    if prog is not None:
        prog["done"] = True
    await resp.write_eof()
    return resp


async def chunked(request: web.Request):
    resp = web.StreamResponse()
    resp.headers["x-served-by"] = request["served_by"]
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for part in (b"alpha-", b"beta-", b"gamma"):
        await resp.write(part)
        await asyncio.sleep(0.01)
    await resp.write_eof()
    return resp


async def slow(request: web.Request):
    st: State = request.app["state"]
    await request.read()
    if "tag" in request.query:
        st.seen.add(request.query["tag"])
    if "hold" in request.query:
        st.seen.add(request.query["hold"])
        await st.event(request.query["hold"]).wait()
    await asyncio.sleep(float(request.query.get("delay", "0")))
    return web.Response(text="slow done")


async def drip(request: web.Request):
    n = int(request.query.get("n", "10"))
    delay = float(request.query.get("delay", "0.1"))
    resp = web.StreamResponse()
    resp.headers["x-served-by"] = request["served_by"]
    resp.content_length = n * 10
    await resp.prepare(request)
    for i in range(n):
        await resp.write(b"%09d\n" % i)
        await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def stream_upload(request: web.Request):
    st: State = request.app["state"]
    tag = request.query.get("hold") or request.query.get("tag")
    if tag:
        st.seen.add(tag)
        st.received[tag] = 0
    if "hold" in request.query:
        await st.event(request.query["hold"]).wait()
    delay = float(request.query.get("delay", "0"))
    h = hashlib.sha256()
    total = 0
    async for piece in request.content.iter_chunked(65536):
        h.update(piece)
        total += len(piece)
        if tag:
            st.received[tag] = total
        if delay:
            await asyncio.sleep(delay)
    return web.json_response({"body_len": total, "body_sha256": h.hexdigest()})


async def ws(request: web.Request):
    sock = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
        else:
            break
    return sock


async def upgrade_refused(request: web.Request):
    await request.read()
    return web.Response(text="no upgrade")


async def ctl_progress(request):
    st: State = request.app["state"]
    return web.json_response(st.progress.get(request.match_info["tag"], {"sent": 0, "done": False}))


async def ctl_received(request):
    st: State = request.app["state"]
    return web.json_response({"received": st.received.get(request.match_info["tag"], 0)})


async def ctl_seen(request):
    st: State = request.app["state"]
    return web.json_response({"seen": request.match_info["tag"] in st.seen})


async def ctl_release(request):
    st: State = request.app["state"]
    st.event(request.match_info["tag"]).set()
    return web.json_response({"released": True})


async def ctl_mode(request):
    st: State = request.app["state"]
    mode = request.match_info["mode"]
    if mode not in MODES:
        return web.json_response({"error": f"unknown mode {mode}"}, status=400)
    st.modes[request.match_info["name"]] = (mode, int(request.query.get("status", "500")))
    return web.json_response({"mode": mode})


async def ctl_hits(request):
    st: State = request.app["state"]
    return web.json_response(st.hits)


async def ctl_log(request):
    st: State = request.app["state"]
    return web.json_response({"log": st.log})


def make_app(names: dict[int, str]) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024,
                          middlewares=[served_by_middleware(names)])
    app["state"] = State()
    r = app.router
    r.add_route("*", "/echo", echo)
    r.add_route("*", "/echo/{tail:.*}", echo)
    r.add_route("*", "/status/{code}", status)
    r.add_get("/bytes/{n}", bytes_)
    r.add_get("/chunked", chunked)
    r.add_route("*", "/slow", slow)
    r.add_get("/drip", drip)
    r.add_route("*", "/stream-upload", stream_upload)
    r.add_get("/ws", ws)
    r.add_route("*", "/upgrade-refused", upgrade_refused)
    r.add_get("/_ctl/progress/{tag}", ctl_progress)
    r.add_get("/_ctl/received/{tag}", ctl_received)
    r.add_get("/_ctl/seen/{tag}", ctl_seen)
    r.add_post("/_ctl/release/{tag}", ctl_release)
    r.add_post("/_ctl/mode/{name}/{mode}", ctl_mode)
    r.add_get("/_ctl/hits", ctl_hits)
    r.add_get("/_ctl/log", ctl_log)
    r.add_route("*", "/{tail:.*}", echo)  # anything else: echo (routing tests use any path)
    return app


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", required=True, help="NAME=PORT")
    args = ap.parse_args()
    names = {}
    for item in args.listen:
        name, _, port = item.partition("=")
        names[int(port)] = name
    runner = web.AppRunner(make_app(names), access_log=None, handle_signals=False)
    await runner.setup()
    for port in names:
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
