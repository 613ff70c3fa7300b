"""AutoIssuer (SPEC §6 automatic issuance) against a real `fastproxy ca serve` process:
obtaining, renewal at renew_at, a CA that is down at start or goes down later, refusals.
Loopback only, every wait bounded."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fastproxy.identity.ca import init_ca
from fastproxy.identity.issuer import AutoIssuer, CARefused, IssueError
from support.procs import free_port, stop_group, wait_for_ports

REPO = Path(__file__).resolve().parents[3]
WEB = "spiffe://mesh.local/ns/default/sa/web"
API = "spiffe://mesh.local/ns/default/sa/api"
SECRET = "issuer-test-token-1"
LOGGER = "fastproxy.identity.issuer"


class CAProcess:
    """`python -m fastproxy ca serve -c FILE` in `workdir`; can be stopped and restarted."""

    def __init__(self, workdir: Path, port: int, ttl: str) -> None:
        self.workdir, self.port = workdir, port
        self.config = workdir / "ca.toml"
        self.config.write_text(f"""
[ca]
dir = "ca"
bind = "127.0.0.1:{port}"
ttl = "{ttl}"

[[ca.token]]
token_file = "web.token"
ids = ["{WEB}"]
""")
        self.log = workdir / "ca-serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CAProcess":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastproxy", "ca", "serve", "-c", str(self.config)],
                cwd=self.workdir, env=env, stdout=log, stderr=log, start_new_session=True)
        wait_for_ports([self.port], proc=self.proc, deadline_s=15, what="ca serve", logs=(self.log,))
        return self

    def stop(self) -> int | None:
        rc = stop_group(self.proc, sig=signal.SIGTERM, grace_s=10) if self.proc else None
        self.proc = None
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def work(tmp_path):
    init_ca(tmp_path / "ca", "mesh.local")
    init_ca(tmp_path / "other-ca", "mesh.local")
    (tmp_path / "web.token").write_text(SECRET + "\n")
    (tmp_path / "wrong.token").write_text("not-the-token\n")
    return tmp_path


@pytest.fixture
def ca_server(work):
    """A factory: ca_server(ttl) -> started CAProcess; all stopped (exit 0) at the end."""
    started: list[CAProcess] = []

    def start(ttl: str = "10m", *, run: bool = True) -> CAProcess:
        ca = CAProcess(work, free_port(), ttl)
        started.append(ca)
        return ca.start() if run else ca

    yield start
    for ca in started:
        if ca.proc is not None:
            rc = ca.stop()
            assert rc == 0, ca.output()
        assert SECRET not in ca.output()


def issuer_for(work: Path, port: int, spiffe_id: str = WEB, token: str = "web.token", trust: str = "ca/ca.pem",
               **kwargs) -> AutoIssuer:
    return AutoIssuer(spiffe_id, f"https://127.0.0.1:{port}", str(work / token), str(work / trust), **kwargs)


def run(coro, timeout: float = 20.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(bounded())


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)


class Collector:
    """on_material for run(): remembers each material and when it arrived."""

    def __init__(self) -> None:
        self.got: list[tuple[float, object]] = []

    def __call__(self, material) -> None:
        self.got.append((time.monotonic(), material))

    @property
    def serials(self) -> list[int]:
        return [m.serial for _, m in self.got]


async def stop_task(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------------------ obtain


def test_obtain(work, ca_server):
    ca = ca_server()
    material = run(issuer_for(work, ca.port).obtain())
    assert material.spiffe_id == WEB
    ca_pem = (work / "ca" / "ca.pem").read_bytes()
    assert material.trust_pem == ca_pem
    # only the leaf: the root is in the trust bundle already
    assert [c.serial_number for c in x509.load_pem_x509_certificates(material.cert_pem)] == [material.serial]
    key = serialization.load_pem_private_key(material.key_pem, None)
    assert key.public_key().public_numbers() == material.cert.public_key().public_numbers()
    assert 590 <= (material.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds() <= 610
    # the key was made in memory: nothing new in the working directory
    assert sorted(p.name for p in work.iterdir() if p.suffix == ".pem") == []
    # a new key every time
    again = run(issuer_for(work, ca.port).obtain())
    assert again.serial != material.serial and again.key_pem != material.key_pem
    assert f"serial={material.serial_hex}" in ca.output()


def test_obtain_failures(work, ca_server):
    ca = ca_server()
    with pytest.raises(CARefused) as refused:
        run(issuer_for(work, ca.port, API).obtain())
    assert refused.value.status == 403 and "not allowed for this token" in refused.value.message
    with pytest.raises(CARefused) as refused:
        run(issuer_for(work, ca.port, token="wrong.token").obtain())
    assert refused.value.status == 401 and "unknown bearer token" in refused.value.message
    with pytest.raises(IssueError, match="token_file .*missing.token: cannot read"):
        run(issuer_for(work, ca.port, token="missing.token").obtain())
    with pytest.raises(IssueError, match="does not verify with ca_trust"):
        run(issuer_for(work, ca.port, trust="other-ca/ca.pem").obtain())
    with pytest.raises(IssueError, match="cannot connect"):
        run(issuer_for(work, free_port()).obtain())
    issuer = AutoIssuer(WEB, f"https://localhost:{ca.port}/", str(work / "web.token"), str(work / "ca/ca.pem"))
    assert run(issuer.obtain()).spiffe_id == WEB   # host name verified, trailing slash ignored


def test_constructor_validation(work):
    args = (str(work / "web.token"), str(work / "ca/ca.pem"))
    for url in ("http://127.0.0.1:1", "127.0.0.1:1", "https://", "https://h:1/?q=1", "https://h:99999"):
        with pytest.raises(ValueError):
            AutoIssuer(WEB, url, *args)
    for renew_at in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError):
            AutoIssuer(WEB, "https://127.0.0.1:1", *args, renew_at=renew_at)
    with pytest.raises(ValueError):
        AutoIssuer("spiffe://Mesh/x", "https://127.0.0.1:1", *args)
    identity = SimpleNamespace(id=WEB, ca_url="https://ca.mesh:8443/base", token_file=args[0], ca_trust=args[1],
                               renew_at=0.8)
    issuer = AutoIssuer.from_identity(identity)
    assert (issuer.host, issuer.port, issuer.path, issuer.renew_at) == ("ca.mesh", 8443, "/base/v1/sign", 0.8)


def test_renew_delay():
    issuer = AutoIssuer(WEB, "https://127.0.0.1:1", "t", "c", renew_at=0.5)
    now = time.time()
    utc = dt.timezone.utc
    material = SimpleNamespace(not_before=dt.datetime.fromtimestamp(now - 60, utc),
                               not_after=dt.datetime.fromtimestamp(now + 100, utc))
    # the lifetime counts from when the certificate arrived, not from the backdated notBefore
    assert 49 <= issuer.renew_delay(material, received=now) <= 50
    assert 19 <= issuer.renew_delay(material, received=now - 60) <= 20
    late = SimpleNamespace(not_before=material.not_before, not_after=dt.datetime.fromtimestamp(now - 1, utc))
    assert issuer.renew_delay(late) == 0.5   # never a busy loop
    assert all(issuer._backoff(n) <= 10.0 for n in range(1, 40))
    assert issuer._backoff(40) >= 8.0


# ------------------------------------------------------------------------------ run


def test_run_renews_at_renew_at(work, ca_server, caplog):
    ca = ca_server("3s")
    issuer = issuer_for(work, ca.port, renew_at=0.5)
    got = Collector()

    async def scenario():
        task = asyncio.create_task(issuer.run(got))
        await until(lambda: len(got.got) >= 1, 10, "first certificate")
        await until(lambda: len(got.got) >= 2, 4, "renewal (3 s lifetime, renew_at 0.5)")
        await stop_task(task)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(scenario())
    (t1, m1), (t2, m2) = got.got[:2]
    assert m1.serial != m2.serial and m2.key_pem != m1.key_pem
    assert 0.8 <= t2 - t1 <= 2.6, t2 - t1   # half of the 3 s lifetime (notAfter has 1 s granularity)
    assert issuer.failures == 0
    text = caplog.text
    assert "got the certificate for" in text and "renewed the certificate for" in text


def test_run_ca_down_at_start_then_up(work, ca_server, caplog):
    ca = ca_server("10m", run=False)
    issuer = issuer_for(work, ca.port)
    got = Collector()

    async def scenario():
        task = asyncio.create_task(issuer.run(got))
        await until(lambda: issuer.failures >= 2, 5, "retries while the CA is down")
        assert got.got == []
        await asyncio.to_thread(ca.start)
        up = time.monotonic()
        await until(lambda: got.got, 8, "first certificate once the CA is up")
        await stop_task(task)
        return got.got[0][0] - up

    with caplog.at_level(logging.INFO, logger=LOGGER):
        waited = run(scenario())
    assert waited < 5.0   # backoff: 0.5, 1, 2, 4 ... — the next retry comes soon
    assert len(got.got) == 1 and got.got[0][1].spiffe_id == WEB
    assert "cannot connect" in caplog.text and "no certificate yet, retrying in" in caplog.text


def test_run_ca_goes_down_after_the_first_certificate(work, ca_server, caplog):
    ca = ca_server("3s")
    issuer = issuer_for(work, ca.port, renew_at=0.5)
    got = Collector()

    async def scenario():
        task = asyncio.create_task(issuer.run(got))
        await until(lambda: got.got, 10, "first certificate")
        first = got.got[0][1]
        assert await asyncio.to_thread(ca.stop) == 0
        # renewal is due 1.5 s in: it fails, the material stays, retries follow
        await until(lambda: issuer.failures >= 2, 6, "failed renewals while the CA is down")
        assert len(got.got) == 1 and issuer.material is first
        await asyncio.to_thread(ca.start)
        await until(lambda: len(got.got) >= 2, 8, "a renewed certificate once the CA is back")
        await stop_task(task)
        return first

    with caplog.at_level(logging.INFO, logger=LOGGER):
        first = run(scenario(), timeout=30)
    assert got.serials[1] != first.serial and issuer.material is got.got[-1][1]
    assert "keeping the current certificate" in caplog.text or "EXPIRED" in caplog.text


def test_run_logs_refusals_with_the_ca_message_and_never_raises(work, ca_server, caplog):
    ca = ca_server()
    got = Collector()
    refused = issuer_for(work, ca.port, API)
    bad_token = issuer_for(work, ca.port, token="wrong.token")

    async def scenario():
        tasks = [asyncio.create_task(refused.run(got)), asyncio.create_task(bad_token.run(got))]
        await until(lambda: refused.failures >= 2 and bad_token.failures >= 2, 5, "refusals")
        assert not any(t.done() for t in tasks)
        for task in tasks:
            await stop_task(task)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(scenario())
    assert got.got == []
    assert f"the CA refused the certificate for {API}: 403 fastproxy: forbidden: {API} is not allowed" in caplog.text
    assert "401 fastproxy: unauthorized: unknown bearer token" in caplog.text
    assert "not-the-token" not in caplog.text and SECRET not in caplog.text


def test_run_survives_a_failing_consumer(work, ca_server, caplog):
    ca = ca_server()
    issuer = issuer_for(work, ca.port)
    calls = []

    def on_material(material):
        calls.append(material)
        if len(calls) == 1:
            raise RuntimeError("consumer refused it")

    async def scenario():
        task = asyncio.create_task(issuer.run(on_material))
        await until(lambda: len(calls) >= 2, 5, "a second attempt after the consumer failed")
        await stop_task(task)

    with caplog.at_level(logging.INFO, logger=LOGGER):
        run(scenario())
    assert issuer.material is calls[1] and "consumer refused it" in caplog.text
