"""SPEC §1/§9/§11: `fastproxy check` and `run` as a user runs them — output, exit codes,
no tracebacks for expected errors — and the process lifecycle: bind failure, SIGTERM
drain, and `--workers N` with a supervisor that restarts a killed worker."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import uuid

import pytest

from support.configs import simple_config
from support.fastproxy import fastproxy_cmd, render, run_cli
from support.procs import (LOOPBACK, children_of, pids_listening_on, port_accepts,
                           stop_group, wait_until)
from support.rawhttp import ConnectionClosed, RawConn, get

pytestmark = pytest.mark.timeout(90)

VALID = simple_config("127.0.0.1:9")


def write(tmp_path, text: str, name: str = "fp.toml"):
    path = tmp_path / name
    path.write_text(render(text)[0])
    return path


def assert_no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


# ---------------------------------------------------------------- check

def test_check_ok(tmp_path):
    path = write(tmp_path, VALID)
    out = run_cli("check", "-c", str(path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok"), out.stdout
    assert_no_traceback(out)


def test_check_does_not_bind(tmp_path):
    """`check` validates without binding: a busy listener port does not matter."""
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write(tmp_path, VALID.replace("${listen:main}", f"{LOOPBACK}:{port}"))
        out = run_cli("check", "-c", str(path))
    assert out.returncode == 0, out.stderr


def test_check_uses_FASTPROXY_CONFIG(tmp_path):
    path = write(tmp_path, VALID)
    out = run_cli("check", cwd=tmp_path, env={"FASTPROXY_CONFIG": str(path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


@pytest.mark.parametrize("mutate,key_path", [
    (lambda t: t.replace("[proxy]\n", "[proxy]\nbogus = 1\n"), "proxy.bogus"),
    (lambda t: t.replace('  cluster = "up"', '  cluster = "up"\n  clustr = "up"'),
     "listener[0].route[0].clustr"),
    (lambda t: t.replace("[proxy]\n", '[proxy]\nworkers = "two"\n'), "proxy.workers"),
    (lambda t: t.replace('  cluster = "up"', '  cluster = "nope"'), "listener[0].route[0].cluster"),
    (lambda t: t.replace("[limits]\n", '[limits]\nheader_timeout = "soon"\n'), "limits.header_timeout"),
], ids=["unknown-key", "unknown-nested-key", "wrong-type", "dangling-cluster", "bad-duration"])
def test_check_config_errors(tmp_path, mutate, key_path):
    path = write(tmp_path, mutate(VALID))
    out = run_cli("check", "-c", str(path))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert str(path) in out.stderr, out.stderr
    assert key_path in out.stderr, out.stderr
    assert not out.stdout.startswith("ok")
    assert_no_traceback(out)


def test_check_reports_every_error(tmp_path):
    text = VALID.replace("[proxy]\n", "[proxy]\nbogus = 1\n").replace(
        "[limits]\n", "[limits]\nmax_headers = \"many\"\n")
    path = write(tmp_path, text)
    out = run_cli("check", "-c", str(path))
    assert out.returncode == 2
    assert "proxy.bogus" in out.stderr and "limits.max_headers" in out.stderr, out.stderr


def test_check_missing_file(tmp_path):
    path = tmp_path / "does-not-exist.toml"
    out = run_cli("check", "-c", str(path))
    assert out.returncode == 2
    assert str(path) in out.stderr
    assert_no_traceback(out)


def test_check_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[proxy\nworkers = 1\n")
    out = run_cli("check", "-c", str(path))
    assert out.returncode == 2
    assert str(path) in out.stderr
    assert_no_traceback(out)


def test_unknown_command_is_usage_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2
    assert_no_traceback(out)


def test_run_with_bad_config_exits_2(tmp_path):
    path = write(tmp_path, VALID.replace("[proxy]\n", "[proxy]\nbogus = 1\n"))
    out = run_cli("run", "-c", str(path), timeout=30)
    assert out.returncode == 2
    assert "proxy.bogus" in out.stderr
    assert_no_traceback(out)


# ---------------------------------------------------------------- run: bind failure

def test_bind_failure_exits_1_naming_the_address(tmp_path):
    with socket.socket() as busy:  # no SO_REUSEPORT: nobody may share it
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write(tmp_path, VALID.replace("${listen:main}", f"{LOOPBACK}:{port}"))
        proc = subprocess.Popen(fastproxy_cmd("run", "-c", str(path)), cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, stdin=subprocess.DEVNULL)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            stop_group(proc, sig=signal.SIGKILL, grace_s=1)
    assert proc.returncode == 1, (out, err)
    assert f"127.0.0.1:{port}" in err, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- SIGTERM / SIGINT

def test_sigterm_drains_in_flight_request_and_exits_0(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), drain_timeout="20s"))
    tag = uuid.uuid4().hex
    result = {}

    def slow_request():
        try:
            result["resp"] = get(proxy.port(), f"/slow?hold={tag}", timeout=60)
        except Exception as e:  # reported below
            result["error"] = repr(e)

    idle = RawConn(proxy.port())  # an idle keep-alive connection: must be closed by drain
    idle.send(b"GET /echo HTTP/1.1\r\nHost: app\r\n\r\n")
    assert idle.read_response().status == 200

    t = threading.Thread(target=slow_request, daemon=True)
    t.start()
    wait_until(lambda: shared_app.seen(tag), deadline_s=10, what="slow request reached upstream")
    proxy.signal(signal.SIGTERM)
    # listeners close to new connections while the request is still in flight
    wait_until(lambda: not port_accepts(proxy.port()), deadline_s=10,
               what="listener closed after SIGTERM")
    try:
        assert idle.wait_closed(10) == b""
    except TimeoutError:
        pytest.fail("idle keep-alive connection not closed during drain")
    finally:
        idle.close()
    assert proxy.proc.poll() is None, "exited before the in-flight request finished"
    shared_app.release(tag)
    t.join(timeout=30)
    assert "error" not in result, result
    assert result["resp"].status == 200 and result["resp"].body == b"slow done"
    assert proxy.wait(timeout=20) == 0


def test_sigterm_exits_0_even_when_drain_timeout_cuts_requests(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr(), drain_timeout="500ms"))
    tag = uuid.uuid4().hex
    with RawConn(proxy.port(), timeout=30) as c:
        c.send(f"GET /slow?hold={tag} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
        wait_until(lambda: shared_app.seen(tag), deadline_s=10, what="request reached upstream")
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(timeout=20) == 0
        try:
            c.read_response(timeout=5)
        except ConnectionClosed:
            pass  # cut off: expected
    shared_app.release(tag)


def test_sigint_exits_0(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr()))
    assert get(proxy.port(), "/echo").status == 200
    proxy.signal(signal.SIGINT)
    assert proxy.wait(timeout=20) == 0


# ---------------------------------------------------------------- workers

def test_workers_share_the_port_and_a_killed_worker_is_restarted(fastproxy, shared_app):
    proxy = fastproxy(simple_config(shared_app.addr()), workers=2)
    port = proxy.port()

    def serving_workers():
        return pids_listening_on(port, children_of(proxy.pid))

    workers = wait_until(lambda: (w := serving_workers()) and len(w) == 2 and w,
                         deadline_s=20, what="two worker processes listening")
    for i in range(20):  # new connections: spread over both workers by the kernel
        assert get(port, f"/echo?i={i}").status == 200

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(
        lambda: (w := serving_workers()) and len(w) == 2 and victim not in w and w,
        deadline_s=20, what="killed worker restarted")
    assert victim not in replaced
    for i in range(20):
        assert get(port, f"/echo?after={i}").status == 200
    assert proxy.proc.poll() is None, "the supervisor died with its worker"


def test_each_worker_logs_its_own_pid(fastproxy, shared_app):
    """BUG at the time of writing: the log format was built once, before the fork, so
    every worker's lines carried the supervisor's pid."""
    proxy = fastproxy(simple_config(shared_app.addr()), workers=2)
    workers = wait_until(lambda: (w := proxy.workers()) and len(w) == 2 and w,
                         deadline_s=20, what="two workers")

    def serving_pids():
        return {int(m) for m in re.findall(r"fastproxy\[(\d+)\] INFO serving ", proxy.stderr())}

    assert wait_until(lambda: serving_pids() == set(workers), deadline_s=20,
                      what="a 'serving' line from each worker, with its own pid")
    assert re.search(rf"fastproxy\[{proxy.pid}\] INFO supervising 2 workers", proxy.stderr())
