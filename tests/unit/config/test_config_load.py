"""Loading and validating sidecar configurations (fastproxy.config.load / loads / validate).

Error cases assert the whole error list: the exact key path and message, and that one
mistake produces one error (no cascades).
"""

import dataclasses
import pathlib
import pickle
import textwrap

import pytest

from fastproxy.config import (
    Address,
    CircuitBreaker,
    Config,
    ConfigError,
    Limits,
    Outlier,
    ProxySettings,
    RetryBudget,
    Tracing,
    load,
    loads,
    summary,
    validate,
)

REPO = pathlib.Path(__file__).resolve().parents[3]
FILE = "x.toml"


def doc(*, top="", listener="", route='cluster = "app"', routes="", cluster="", tail=""):
    """A valid minimal configuration with snippets inserted at the usual places."""
    return textwrap.dedent(
        f"""\
        {top}
        [[listener]]
        name = "out"
        bind = "127.0.0.1:15001"
        {listener}
        [[listener.route]]
        {route}
        {routes}
        [cluster.app]
        endpoints = ["127.0.0.1:8080"]
        {cluster}
        {tail}
        """
    )


IDENTITY = """
[identity]
id = "spiffe://mesh.local/ns/default/sa/web"
cert = "c.pem"
key = "k.pem"
trust = "t.pem"
"""


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, FILE)
    assert all(line.startswith(f"{FILE}: ") for line in info.value.errors)
    return [line.removeprefix(f"{FILE}: ") for line in info.value.errors]


# --- defaults and the shipped examples -------------------------------------------------


def test_minimal_config_has_spec_defaults():
    config = loads(doc(), FILE)
    assert config.path == FILE
    assert config.proxy == ProxySettings(workers=1, admin=Address("127.0.0.1", 9901), drain_timeout=10.0, access_log="stdout")
    assert config.limits == Limits(65536, 100, 10.0, 60.0, 10000)
    assert config.identity is None
    assert config.tracing == Tracing(("w3c", "b3"), 0.01, "off", "fastproxy")
    assert config.tracing.export_address is None
    (listener,) = config.listeners
    assert (listener.name, listener.bind, listener.tls, listener.direction) == ("out", Address("127.0.0.1", 15001), "off", "outbound")
    assert listener.allow == ("*",)
    assert listener.limits == config.limits
    (route,) = listener.routes
    assert route.name == "0"
    assert (route.host, route.prefix, route.path, route.method, route.headers) == (None, None, None, None, ())
    assert (route.cluster, route.split, route.clusters) == ("app", (), ("app",))
    assert (route.timeout, route.retries, route.retry_on, route.allow) == (15.0, 0, ("connect-failure", "reset"), None)
    cluster = config.clusters["app"]
    assert cluster.endpoints == (Address("127.0.0.1", 8080),)
    assert (cluster.tls, cluster.peer, cluster.balance) == ("off", None, "round_robin")
    assert (cluster.connect_timeout, cluster.max_connections, cluster.max_pending, cluster.idle_timeout) == (1.0, 1024, 1024, 60.0)
    assert cluster.circuit_breaker is None and cluster.outlier is None
    assert config.raw["cluster"]["app"]["endpoints"] == ["127.0.0.1:8080"]


def test_default_config_file():
    config = load(REPO / "config/fastproxy.toml")
    assert summary(config) == "1 listener (outbound 127.0.0.1:15001), 1 route, 1 cluster, 1 worker"
    assert config.proxy.admin == Address("127.0.0.1", 9901)
    assert config.listeners[0].routes[0].cluster == "app"
    assert config.clusters["app"].endpoints == (Address("127.0.0.1", 8080),)


def test_full_example_uses_every_key():
    config = load(REPO / "config/example-full.toml")
    assert summary(config) == "2 listeners (inbound 0.0.0.0:15006, outbound 127.0.0.1:15001), 5 routes, 4 clusters, 1 worker"
    inbound, outbound = config.listeners
    assert inbound.tls == "mtls" and inbound.direction == "inbound"
    assert inbound.limits == Limits(max_headers=50, header_timeout=5.0)
    assert inbound.routes[0].allow == ("spiffe://mesh.local/ns/ops/*",)
    canary, split, ratings = outbound.routes
    assert canary.headers == (("x-canary", "1"),) and canary.method == "GET"
    assert [(m.cluster, m.weight) for m in split.split] == [("reviews-v1", 90), ("reviews-v2", 10)]
    assert (split.timeout, split.retries, split.retry_on) == (3.0, 2, ("connect-failure", "reset", "5xx"))
    assert split.retry_budget == RetryBudget(0.1, 5.0) and canary.retry_budget is None
    assert ratings.host == "*.ratings.svc" and ratings.path == "/v1/ratings"
    reviews = config.clusters["reviews-v1"]
    assert reviews.circuit_breaker == CircuitBreaker(3, 10.0, 60.0, 1)
    assert reviews.outlier == Outlier(5, 30.0, 0.5)
    assert reviews.retry_budget == RetryBudget() == RetryBudget(0.2, 10.0)
    assert reviews.endpoints[1] == Address("reviews-v1.default.svc", 15006) and not reviews.endpoints[1].is_ip
    assert config.clusters["reviews-v2"].endpoints[1] == Address("fd00::6", 15006)
    assert config.tracing.service_name == "web"
    # every key the SPEC documents appears in the example (commented-out identity alternatives included)
    text = (REPO / "config/example-full.toml").read_text()
    for key in ("ca_url", "token_file", "ca_trust", "renew_at", "retry_on", "half_open_requests", "max_ejected", "retry_budget", "min_per_second"):
        assert f"{key} =" in text


def test_config_is_immutable():
    config = loads(doc(), FILE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listeners[0].name = "x"
    with pytest.raises(TypeError):
        config.clusters["other"] = config.clusters["app"]
    assert isinstance(config.listeners, tuple) and isinstance(config.listeners[0].routes, tuple)


def test_workers_auto(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    config = loads(doc(top='[proxy]\nworkers = "auto"'), FILE)
    assert config.proxy.workers == 3
    assert summary(config).endswith(", 3 workers")
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert loads(doc(top='[proxy]\nworkers = "auto"'), FILE).proxy.workers == 1


def test_proxy_settings():
    config = loads(doc(top='[proxy]\nworkers = 4\nadmin = ""\ndrain_timeout = 0\naccess_log = "/var/log/fp.json"'), FILE)
    assert config.proxy == ProxySettings(4, None, 0.0, "/var/log/fp.json")


def test_listener_limits_override_global_limits():
    config = loads(
        doc(
            top='[limits]\nmax_headers = 20\nidle_timeout = "5m"',
            listener='[listener.limits]\nheader_timeout = "1.5s"\nmax_headers = 10',
            tail='[[listener]]\nname = "other"\nbind = "127.0.0.1:15002"\n[[listener.route]]\ncluster = "app"',
        ),
        FILE,
    )
    assert config.limits == Limits(max_headers=20, idle_timeout=300.0)
    assert config.listeners[0].limits == Limits(max_headers=10, idle_timeout=300.0, header_timeout=1.5)
    assert config.listeners[1].limits == config.limits


def test_direction_follows_tls_unless_given():
    config = loads(
        IDENTITY
        + doc(
            listener='tls = "tls"',
            tail=(
                '[[listener]]\nname = "m"\nbind = "127.0.0.1:15002"\ntls = "mtls"\ndirection = "outbound"\n'
                '[[listener.route]]\ncluster = "app"\n'
                '[[listener]]\nname = "p"\nbind = "127.0.0.1:15003"\ndirection = "inbound"\n'
                '[[listener.route]]\ncluster = "app"'
            ),
        ),
        FILE,
    )
    assert [(l.tls, l.direction) for l in config.listeners] == [("tls", "inbound"), ("mtls", "outbound"), ("off", "inbound")]


def test_route_matches_are_normalized():
    config = loads(
        doc(
            route='host = "Reviews.Default"\nmethod = "PATCH"\nheaders = { "X-Canary" = "1", "x-user" = "a b" }\ncluster = "app"',
            routes='[[listener.route]]\nname = "wild"\nhost = "*.Example.COM"\npath = "/exact"\ncluster = "app"\n'
            '[[listener.route]]\nhost = "[::1]"\nprefix = "/api/"\ncluster = "app"\n'
            '[[listener.route]]\nhost = "10.0.0.1"\ncluster = "app"',
        ),
        FILE,
    )
    first, wild, v6, v4 = config.listeners[0].routes
    assert (first.name, first.host, first.method, first.headers) == ("0", "reviews.default", "PATCH", (("x-canary", "1"), ("x-user", "a b")))
    assert (wild.name, wild.host, wild.path, wild.prefix) == ("wild", "*.example.com", "/exact", None)
    assert (v6.name, v6.host, v6.prefix) == ("2", "[::1]", "/api/")
    assert v4.host == "10.0.0.1"


def test_split_and_cluster_tables():
    config = loads(
        IDENTITY
        + doc(
            route='split = [{ cluster = "app", weight = 0 }, { cluster = "b", weight = 1 }]\nretries = 3\nretry_on = ["5xx", "gateway-error"]\ntimeout = 0.25',
            tail=(
                '[cluster.b]\nendpoints = ["b.svc:80", "[::1]:81"]\ntls = "mtls"\npeer = "spiffe://mesh.local/ns/b/*"\n'
                'balance = "random"\nconnect_timeout = "250ms"\nmax_connections = 1\nmax_pending = 0\nidle_timeout = 5\n'
                "[cluster.b.circuit_breaker]\nmax_failures = 0\n[cluster.b.outlier]\n"
            ),
        ),
        FILE,
    )
    route = config.listeners[0].routes[0]
    assert route.cluster is None and route.clusters == ("app", "b")
    assert (route.retries, route.retry_on, route.timeout) == (3, ("5xx", "gateway-error"), 0.25)
    b = config.clusters["b"]
    assert (b.tls, b.peer, b.balance, b.connect_timeout, b.max_connections, b.max_pending, b.idle_timeout) == (
        "mtls", "spiffe://mesh.local/ns/b/*", "random", 0.25, 1, 0, 5.0)
    assert b.circuit_breaker == CircuitBreaker(max_failures=0)
    assert b.outlier == Outlier()
    assert list(config.clusters) == ["app", "b"]  # file order


def test_identity_and_tracing():
    auto = '[identity]\nid = "spiffe://mesh.local/ns/default/sa/api"\nca_url = "https://127.0.0.1:8443"\ntoken_file = "t"\nca_trust = "ca.pem"\nrenew_at = 0.75\n'
    config = loads(auto + '[tracing]\npropagate = ["b3"]\nsample = 1\nexport = "otlp+http://127.0.0.1:4318"\n' + doc(), FILE)
    identity = config.identity
    assert identity.automatic and identity.renew_at == 0.75 and identity.cert is None
    assert config.tracing == Tracing(("b3",), 1.0, "otlp+http://127.0.0.1:4318", "api")
    assert config.tracing.export_address == Address("127.0.0.1", 4318)
    files = loads(IDENTITY + '[tracing]\nservice_name = "custom"\npropagate = []\n' + doc(), FILE)
    assert not files.identity.automatic and files.identity.renew_at == 0.5
    assert files.tracing.service_name == "custom" and files.tracing.propagate == ()


def test_the_identity_id_may_come_from_the_environment(monkeypatch):
    # one ConfigMap for every workload of a namespace: the injected sidecar's id comes from
    # its Pod (SPEC §13); an id in the file is used as it is
    without_id = IDENTITY.replace('id = "spiffe://mesh.local/ns/default/sa/web"\n', "")
    with pytest.raises(ConfigError, match="identity.id: is required"):
        loads(without_id + doc(), FILE)
    monkeypatch.setenv("FASTPROXY_IDENTITY_ID", "spiffe://cluster.local/ns/shop/sa/reviews")
    config = loads(without_id + doc(), FILE)
    assert config.identity.id == "spiffe://cluster.local/ns/shop/sa/reviews" and config.tracing.service_name == "reviews"
    assert loads(IDENTITY + doc(), FILE).identity.id == "spiffe://mesh.local/ns/default/sa/web"
    monkeypatch.setenv("FASTPROXY_IDENTITY_ID", "spiffe://cluster.local/ns/$(POD_NAMESPACE)/sa/x")
    with pytest.raises(ConfigError, match="identity.id: .* is not a valid SPIFFE id"):
        loads(without_id + doc(), FILE)


def test_allow_entries_on_mtls_listener():
    config = loads(
        IDENTITY
        + doc(
            listener='tls = "mtls"\nallow = ["*", "spiffe://mesh.local/ns/a/sa/b", "spiffe://mesh.local/ns/ops/*", "spiffe://other.td/*"]',
            route='allow = ["spiffe://mesh.local/ns/ops/*"]\ncluster = "app"',
        ),
        FILE,
    )
    listener = config.listeners[0]
    assert listener.allow[1:] == ("spiffe://mesh.local/ns/a/sa/b", "spiffe://mesh.local/ns/ops/*", "spiffe://other.td/*")
    assert listener.routes[0].allow == ("spiffe://mesh.local/ns/ops/*",)


def test_binds_that_do_not_collide():
    config = loads(
        doc(
            top='[proxy]\nadmin = "[::1]:9901"',
            tail='[[listener]]\nname = "b"\nbind = "127.0.0.2:15001"\n[[listener.route]]\ncluster = "app"\n'
            '[[listener]]\nname = "c"\nbind = "[::1]:15001"\n[[listener.route]]\ncluster = "app"',
        ),
        FILE,
    )
    assert [str(l.bind) for l in config.listeners] == ["127.0.0.1:15001", "127.0.0.2:15001", "[::1]:15001"]


# --- every error class: exact key path and message --------------------------------------

ADDRESS = 'must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001"'
DURATION = 'must be a duration like "250ms", "10s", "1m"'
SEGMENTS = 'path segments must be non-empty, not "." or "..", and made of A-Z a-z 0-9 . - _'
TD = "the trust domain must be non-empty and made of a-z 0-9 . - _ (no port, no userinfo)"

CASES = {
    # top level
    "unknown top key": (doc(top="listeners = 1"), "listeners: unknown key (did you mean 'listener'?)"),
    "unknown key no match": (doc(top="zzz = 1"), "zzz: unknown key"),
    "quoted unknown key": (doc(top='"a b" = 1'), '"a b": unknown key'),
    # [proxy]
    "workers bool": (doc(top="[proxy]\nworkers = true"), 'proxy.workers: must be an integer >= 1 or "auto"'),
    "workers zero": (doc(top="[proxy]\nworkers = 0"), 'proxy.workers: must be an integer >= 1 or "auto"'),
    "workers float": (doc(top="[proxy]\nworkers = 2.0"), 'proxy.workers: must be an integer >= 1 or "auto"'),
    "workers word": (doc(top='[proxy]\nworkers = "all"'), 'proxy.workers: must be an integer >= 1 or "auto"'),
    "proxy typo": (doc(top="[proxy]\nworker = 2"), "proxy.worker: unknown key (did you mean 'workers'?)"),
    "proxy not table": (doc(top="proxy = 1"), "proxy: must be a table"),
    "admin no port": (doc(top='[proxy]\nadmin = "localhost"'), f"proxy.admin: {ADDRESS} (the port is missing)"),
    "admin on listener port": (
        doc(top='[proxy]\nadmin = "127.0.0.1:15001"'),
        "proxy.admin: 127.0.0.1:15001 conflicts with listener[0].bind 127.0.0.1:15001 (the admin API needs its own port)",
    ),
    "admin wildcard": (
        doc(top='[proxy]\nadmin = "0.0.0.0:15001"'),
        "proxy.admin: 0.0.0.0:15001 conflicts with listener[0].bind 127.0.0.1:15001 (the admin API needs its own port)",
    ),
    "drain_timeout": (doc(top='[proxy]\ndrain_timeout = "soon"'), f"proxy.drain_timeout: {DURATION}"),
    "drain_timeout negative": (doc(top="[proxy]\ndrain_timeout = -1"), f"proxy.drain_timeout: {DURATION}"),
    "access_log empty": (doc(top='[proxy]\naccess_log = ""'), "proxy.access_log: must not be empty"),
    "access_log type": (doc(top="[proxy]\naccess_log = false"), "proxy.access_log: must be a string"),
    "access_log control": (doc(top='[proxy]\naccess_log = "a\\nb"'), "proxy.access_log: must not contain control characters"),
    # [limits]
    "limit float": (doc(top="[limits]\nmax_header_bytes = 1.5"), "limits.max_header_bytes: must be an integer >= 1"),
    "limit zero": (doc(top="[limits]\nmax_headers = 0"), "limits.max_headers: must be an integer >= 1"),
    "limit bool": (doc(top="[limits]\nmax_connections = true"), "limits.max_connections: must be an integer >= 1"),
    "limit timeout zero": (doc(top='[limits]\nheader_timeout = "0s"'), "limits.header_timeout: must be greater than 0"),
    "limit timeout unit": (doc(top='[limits]\nidle_timeout = "1d"'), f"limits.idle_timeout: {DURATION}"),
    "limit typo": (doc(top="[limits]\nmax_header = 1"), "limits.max_header: unknown key (did you mean 'max_headers'?)"),
    "listener limit": (doc(listener='[listener.limits]\nheader_timeout = "x"'), f"listener[0].limits.header_timeout: {DURATION}"),
    "listener limit typo": (doc(listener="[listener.limits]\nmax_conections = 1"), "listener[0].limits.max_conections: unknown key (did you mean 'max_connections'?)"),
    "listener limits type": (doc(listener="limits = 5"), "listener[0].limits: must be a table"),
    # [identity]
    "identity needed by listener": (doc(listener='tls = "mtls"'), 'identity: is required because listener[0] has tls = "mtls"'),
    "identity needed by tls listener": (doc(listener='tls = "tls"'), 'identity: is required because listener[0] has tls = "tls"'),
    "identity needed by permissive listener": (doc(listener='tls = "permissive"'), 'identity: is required because listener[0] has tls = "permissive"'),
    "identity needed by cluster": (
        doc(cluster='tls = "mtls"\npeer = "spiffe://mesh.local/x"'),
        'identity: is required because cluster.app has tls = "mtls"',
    ),
    "identity id missing": ('[identity]\ncert = "c"\nkey = "k"\ntrust = "t"\n' + doc(), "identity.id: is required"),
    "identity id invalid": (
        '[identity]\nid = "spiffe://Mesh/x"\ncert = "c"\nkey = "k"\ntrust = "t"\n' + doc(),
        f'identity.id: "spiffe://Mesh/x" is not a valid SPIFFE id: {TD}',
    ),
    "identity id without path": (
        '[identity]\nid = "spiffe://mesh.local"\ncert = "c"\nkey = "k"\ntrust = "t"\n' + doc(),
        'identity.id: "spiffe://mesh.local" is not a valid SPIFFE id: it needs a path after the trust domain',
    ),
    "identity nothing": ('[identity]\nid = "spiffe://m/x"\n' + doc(), "identity: needs cert, key and trust, or ca_url, token_file and ca_trust"),
    "identity partial files": (
        '[identity]\nid = "spiffe://m/x"\ncert = "c"\n' + doc(),
        ["identity.key: is required (cert, key and trust go together)", "identity.trust: is required (cert, key and trust go together)"],
    ),
    "identity partial auto": (
        '[identity]\nid = "spiffe://m/x"\nca_url = "https://ca:8443"\nca_trust = "c"\n' + doc(),
        "identity.token_file: is required (ca_url, token_file and ca_trust go together)",
    ),
    "identity both": (
        IDENTITY + 'ca_url = "https://ca:8443"\n' + doc(),
        "identity: use either cert, key and trust, or ca_url, token_file and ca_trust, not both",
    ),
    "renew_at without ca": (IDENTITY + "renew_at = 0.5\n" + doc(), "identity.renew_at: only allowed with ca_url"),
    "renew_at range": (
        '[identity]\nid = "spiffe://m/x"\nca_url = "https://ca:8443"\ntoken_file = "t"\nca_trust = "c"\nrenew_at = 1\n' + doc(),
        "identity.renew_at: must be a number greater than 0 and less than 1",
    ),
    "ca_url http": (
        '[identity]\nid = "spiffe://m/x"\nca_url = "http://ca:8443"\ntoken_file = "t"\nca_trust = "c"\n' + doc(),
        'identity.ca_url: must be a URL like "https://127.0.0.1:8443"',
    ),
    "identity typo": (IDENTITY + 'trusts = "x"\n' + doc(), "identity.trusts: unknown key (did you mean 'trust'?)"),
    # [tracing]
    "sample range": (doc(top="[tracing]\nsample = 1.5"), "tracing.sample: must be a number between 0 and 1"),
    "sample bool": (doc(top="[tracing]\nsample = true"), "tracing.sample: must be a number between 0 and 1"),
    "sample nan": (doc(top="[tracing]\nsample = nan"), "tracing.sample: must be a number between 0 and 1"),
    "propagate value": (doc(top='[tracing]\npropagate = ["zipkin"]'), 'tracing.propagate[0]: must be one of "w3c", "b3"'),
    "propagate twice": (doc(top='[tracing]\npropagate = ["b3", "b3"]'), 'tracing.propagate[1]: "b3" is listed twice'),
    "propagate string": (doc(top='[tracing]\npropagate = "w3c"'), "tracing.propagate: must be an array"),
    "export scheme": (doc(top='[tracing]\nexport = "http://c:4318"'), 'tracing.export: must be "off" or "otlp+http://HOST:PORT"'),
    "export address": (
        doc(top='[tracing]\nexport = "otlp+http://collector"'),
        f'tracing.export: must be "off" or "otlp+http://HOST:PORT": {ADDRESS} (the port is missing)',
    ),
    "service_name empty": (doc(top='[tracing]\nservice_name = ""'), "tracing.service_name: must not be empty"),
    # [[listener]]
    "no listener": ('[cluster.app]\nendpoints = ["127.0.0.1:1"]\n', "listener: at least one [[listener]] is required"),
    "listener table": (
        '[listener]\nname = "x"\n[cluster.app]\nendpoints = ["127.0.0.1:1"]\n',
        "listener: must be an array of tables ([[listener]])",
    ),
    "listener name missing": (doc().replace('name = "out"', ""), "listener[0].name: is required"),
    "listener bind missing": (doc().replace('bind = "127.0.0.1:15001"', ""), "listener[0].bind: is required"),
    "listener name syntax": (doc().replace('name = "out"', 'name = "out bound"'), "listener[0].name: must be made of A-Z a-z 0-9 _ -"),
    "listener name type": (doc().replace('name = "out"', "name = 1"), "listener[0].name: must be a string"),
    "listener name length": (doc().replace('name = "out"', f'name = "{"o" * 65}"'), "listener[0].name: must be at most 64 characters long"),
    "listener bind": (doc().replace("127.0.0.1:15001", "127.0.0.1:http"), "listener[0].bind: port must be a number between 1 and 65535"),
    "listener bind v6": (doc().replace("127.0.0.1:15001", "::1:15001"), 'listener[0].bind: IPv6 addresses need brackets, like "[::1]:15001"'),
    "listener tls": (doc(listener='tls = "mtsl"'), 'listener[0].tls: must be one of "off", "tls", "mtls", "permissive" (did you mean "mtls"?)'),
    "permissive on a cluster": (doc(cluster='tls = "permissive"'), 'cluster.app.tls: must be one of "off", "tls", "mtls"'),
    "listener direction": (doc(listener='direction = "in"'), 'listener[0].direction: must be one of "inbound", "outbound"'),
    "listener typo": (doc(listener='bnd = "x"'), "listener[0].bnd: unknown key (did you mean 'bind'?)"),
    "allow without mtls": (doc(listener='allow = ["*"]'), 'listener[0].allow: only allowed with tls = "mtls" or "permissive"'),
    "allow on tls": (IDENTITY + doc(listener='tls = "tls"\nallow = ["*"]'), 'listener[0].allow: only allowed with tls = "mtls" or "permissive"'),
    "allow empty": (
        IDENTITY + doc(listener='tls = "mtls"\nallow = []'),
        'listener[0].allow: must not be empty (use ["*"] for any peer the trust bundle accepts)',
    ),
    "allow entry": (
        IDENTITY + doc(listener='tls = "mtls"\nallow = ["*", "spiffe://mesh.local/ns/*/x"]'),
        f'listener[0].allow[1]: "spiffe://mesh.local/ns/*/x" is not a valid SPIFFE id: {SEGMENTS}',
    ),
    "allow plain name": (
        IDENTITY + doc(listener='tls = "mtls"\nallow = ["frontend"]'),
        'listener[0].allow[0]: "frontend" is not a valid SPIFFE id: it must start with "spiffe://"',
    ),
    "duplicate listener name": (
        doc(tail='[[listener]]\nname = "out"\nbind = "127.0.0.1:15002"\n[[listener.route]]\ncluster = "app"'),
        "listener[1].name: duplicate listener name 'out' (also listener[0])",
    ),
    "same bind": (
        doc(tail='[[listener]]\nname = "b"\nbind = "127.0.0.1:15001"\n[[listener.route]]\ncluster = "app"'),
        "listener[1].bind: 127.0.0.1:15001 conflicts with listener[0].bind 127.0.0.1:15001",
    ),
    "wildcard bind": (
        doc(tail='[[listener]]\nname = "b"\nbind = "[::]:15001"\n[[listener.route]]\ncluster = "app"'),
        "listener[1].bind: [::]:15001 conflicts with listener[0].bind 127.0.0.1:15001",
    ),
    "no route": (
        '[[listener]]\nname = "a"\nbind = "127.0.0.1:1"\n[cluster.app]\nendpoints = ["127.0.0.1:2"]\n',
        "listener[0].route: at least one [[listener.route]] is required",
    ),
    "empty routes": (
        '[[listener]]\nname = "a"\nbind = "127.0.0.1:1"\nroute = []\n[cluster.app]\nendpoints = ["127.0.0.1:2"]\n',
        "listener[0].route: at least one [[listener.route]] is required",
    ),
    "route table": (
        '[[listener]]\nname = "a"\nbind = "127.0.0.1:1"\n[listener.route]\ncluster = "app"\n[cluster.app]\nendpoints = ["127.0.0.1:2"]\n',
        "listener[0].route: must be an array of tables ([[listener.route]])",
    ),
    # [[listener.route]]
    "route typo": (doc(route='cluster = "app"\nclusters = "app"'), "listener[0].route[0].clusters: unknown key (did you mean 'cluster'?)"),
    "route not a table": (
        '[[listener]]\nname = "a"\nbind = "127.0.0.1:1"\nroute = ["app"]\n[cluster.app]\nendpoints = ["127.0.0.1:2"]\n',
        "listener[0].route[0]: must be a table",
    ),
    "dangling cluster": (doc(route='cluster = "ap"'), "listener[0].route[0].cluster: unknown cluster 'ap' (did you mean 'app'?)"),
    "dangling cluster far": (doc(route='cluster = "zzzzzz"'), "listener[0].route[0].cluster: unknown cluster 'zzzzzz'"),
    "dangling no clusters": (
        '[[listener]]\nname = "a"\nbind = "127.0.0.1:1"\n[[listener.route]]\ncluster = "app"\n',
        "listener[0].route[0].cluster: unknown cluster 'app' (no [cluster.NAME] tables are defined)",
    ),
    "dangling split member": (
        doc(route='split = [{ cluster = "app", weight = 1 }, { cluster = "v2", weight = 1 }]'),
        "listener[0].route[0].split[1].cluster: unknown cluster 'v2'",
    ),
    "split weight negative (SPEC example)": (
        doc(route='cluster = "app"', routes='[[listener.route]]\nsplit = [{ cluster = "app", weight = -1 }]'),
        "listener[0].route[1].split[0].weight: must be an integer >= 0",
    ),
    "split weight string": (doc(route='split = [{ cluster = "app", weight = "90" }]'), "listener[0].route[0].split[0].weight: must be an integer >= 0"),
    "split weight float": (doc(route='split = [{ cluster = "app", weight = 0.5 }]'), "listener[0].route[0].split[0].weight: must be an integer >= 0"),
    "split all zero": (
        doc(route='split = [{ cluster = "app", weight = 0 }]'),
        "listener[0].route[0].split: at least one weight must be > 0",
    ),
    "split empty": (doc(route="split = []"), "listener[0].route[0].split: must not be empty"),
    "split type": (doc(route='split = "app"'), 'listener[0].route[0].split: must be an array like [{ cluster = "v1", weight = 90 }, ...]'),
    "split member missing weight": (doc(route='split = [{ cluster = "app" }]'), "listener[0].route[0].split[0].weight: is required"),
    "split member typo": (
        doc(route='split = [{ cluster = "app", weight = 1, wieght = 2 }]'),
        "listener[0].route[0].split[0].wieght: unknown key (did you mean 'weight'?)",
    ),
    "split member twice": (
        doc(route='split = [{ cluster = "app", weight = 1 }, { cluster = "app", weight = 2 }]'),
        "listener[0].route[0].split[1].cluster: cluster 'app' is already in this split",
    ),
    "cluster and split": (
        doc(route='cluster = "app"\nsplit = [{ cluster = "app", weight = 1 }]'),
        'listener[0].route[0]: has both "cluster" and "split"; use one',
    ),
    "neither cluster nor split": (doc(route='prefix = "/"'), 'listener[0].route[0]: needs "cluster" or "split"'),
    "prefix and path": (doc(route='cluster = "app"\nprefix = "/a"\npath = "/b"'), 'listener[0].route[0]: has both "prefix" and "path"; use one'),
    "prefix slash": (doc(route='cluster = "app"\nprefix = "api"'), 'listener[0].route[0].prefix: must start with "/"'),
    "path query": (
        doc(route='cluster = "app"\npath = "/a?b=1"'),
        'listener[0].route[0].path: must be ASCII without spaces, "?" or "#" (the query string is not matched; percent-encode other characters)',
    ),
    "host port": (doc(route='cluster = "app"\nhost = "reviews:80"'), 'listener[0].route[0].host: must be a host name without port, or "*.suffix" (got "reviews:80")'),
    "host star": (doc(route='cluster = "app"\nhost = "*"'), 'listener[0].route[0].host: must be a host name without port, or "*.suffix" (got "*")'),
    "host inner star": (doc(route='cluster = "app"\nhost = "a.*.com"'), 'listener[0].route[0].host: must be a host name without port, or "*.suffix" (got "a.*.com")'),
    "method lowercase": (doc(route='cluster = "app"\nmethod = "get"'), 'listener[0].route[0].method: must be an HTTP method like "GET" (methods are case-sensitive)'),
    "method space": (doc(route='cluster = "app"\nmethod = "GET POST"'), 'listener[0].route[0].method: must be an HTTP method like "GET" (methods are case-sensitive)'),
    "header name": (doc(route='cluster = "app"\nheaders = { "x canary" = "1" }'), 'listener[0].route[0].headers."x canary": is not a valid header name'),
    "header twice": (
        doc(route='cluster = "app"\nheaders = { "X-A" = "1", "x-a" = "2" }'),
        "listener[0].route[0].headers.x-a: is listed twice (header names are case-insensitive)",
    ),
    "header value type": (doc(route='cluster = "app"\nheaders = { "x-a" = 1 }'), "listener[0].route[0].headers.x-a: must be a string"),
    "header value newline": (
        doc(route='cluster = "app"\nheaders = { "x-a" = "1\\r\\nx: y" }'),
        "listener[0].route[0].headers.x-a: must be a header value without control characters or outer whitespace",
    ),
    "headers type": (doc(route='cluster = "app"\nheaders = ["x-a"]'), 'listener[0].route[0].headers: must be a table like { "x-canary" = "1" }'),
    "route timeout": (doc(route='cluster = "app"\ntimeout = "0ms"'), "listener[0].route[0].timeout: must be greater than 0"),
    "route timeout unit": (doc(route='cluster = "app"\ntimeout = "3 s"'), f"listener[0].route[0].timeout: {DURATION}"),
    "retries negative": (doc(route='cluster = "app"\nretries = -1'), "listener[0].route[0].retries: must be an integer >= 0"),
    "retries bool": (doc(route='cluster = "app"\nretries = true'), "listener[0].route[0].retries: must be an integer >= 0"),
    "retry_on value": (
        doc(route='cluster = "app"\nretry_on = ["5xx", "timeout"]'),
        'listener[0].route[0].retry_on[1]: must be one of "connect-failure", "reset", "5xx", "gateway-error", "cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable"',
    ),
    "retry_on typo": (
        doc(route='cluster = "app"\nretry_on = ["connect_failure"]'),
        'listener[0].route[0].retry_on[0]: must be one of "connect-failure", "reset", "5xx", "gateway-error", "cancelled", "deadline-exceeded", "resource-exhausted", "internal", "unavailable" (did you mean "connect-failure"?)',
    ),
    "route allow without mtls": (doc(route='cluster = "app"\nallow = ["*"]'), 'listener[0].route[0].allow: only allowed with tls = "mtls" or "permissive"'),
    "route name": (doc(route='cluster = "app"\nname = "a/b"'), "listener[0].route[0].name: must be made of A-Z a-z 0-9 _ -"),
    "duplicate route name": (
        doc(route='cluster = "app"\nname = "r"', routes='[[listener.route]]\nname = "r"\ncluster = "app"'),
        "listener[0].route[1].name: duplicate route name 'r' (also route[0])",
    ),
    "route name clashes with index": (
        doc(route='cluster = "app"\nname = "1"', routes='[[listener.route]]\ncluster = "app"'),
        "listener[0].route[1]: duplicate route name '1' (also route[0])",
    ),
    # [cluster.NAME]
    "clusters array": (
        '[[listener]]\nname = "a"\nbind = "127.0.0.1:1"\n[[listener.route]]\ncluster = "app"\n[[cluster]]\nname = "app"\n',
        [
            "listener[0].route[0].cluster: unknown cluster 'app' (no [cluster.NAME] tables are defined)",
            "cluster: must be a table of clusters like [cluster.app]",
        ],
    ),
    "cluster not table": (doc(tail='[cluster]\nb = "x"'), "cluster.b: must be a table"),
    "cluster name": (doc(tail='[cluster."b c"]\nendpoints = ["127.0.0.1:1"]'), 'cluster."b c": the cluster name must be made of A-Z a-z 0-9 _ -'),
    "cluster name length": (doc(tail=f'[cluster.{"c" * 65}]\nendpoints = ["127.0.0.1:1"]'), f'cluster.{"c" * 65}: the cluster name must be at most 64 characters long'),
    "endpoints missing": (doc(tail="[cluster.b]\n"), "cluster.b.endpoints: is required"),
    "endpoints empty": (doc(cluster="", tail="[cluster.b]\nendpoints = []"), "cluster.b.endpoints: needs at least one endpoint"),
    "endpoint invalid": (doc(tail='[cluster.b]\nendpoints = ["127.0.0.1:1", "b_c:80"]'), 'cluster.b.endpoints[1]: "b_c" is not a valid IP address or DNS name'),
    "endpoint type": (doc(tail="[cluster.b]\nendpoints = [8080]"), f"cluster.b.endpoints[0]: {ADDRESS}"),
    "endpoint twice": (doc(tail='[cluster.b]\nendpoints = ["b:80", "b:80"]'), 'cluster.b.endpoints[1]: "b:80" is listed twice'),
    "endpoints string": (doc(tail='[cluster.b]\nendpoints = "b:80"'), "cluster.b.endpoints: must be an array"),
    "cluster typo": (doc(cluster='endpoint = "x"'), "cluster.app.endpoint: unknown key (did you mean 'endpoints'?)"),
    "cluster tls": (doc(cluster='tls = "ssl"'), 'cluster.app.tls: must be one of "off", "tls", "mtls"'),
    "peer missing": (IDENTITY + doc(cluster='tls = "mtls"'), 'cluster.app.peer: is required with tls = "mtls"'),
    "peer without mtls": (doc(cluster='peer = "spiffe://m/x"'), 'cluster.app.peer: only allowed with tls = "mtls"'),
    "peer on tls": (doc(cluster='tls = "tls"\npeer = "spiffe://m/x"'), 'cluster.app.peer: only allowed with tls = "mtls"'),
    "peer star": (
        IDENTITY + doc(cluster='tls = "mtls"\npeer = "*"'),
        'cluster.app.peer: "*" is not a valid SPIFFE id: it must start with "spiffe://"',
    ),
    "balance": (doc(cluster='balance = "least_requests"'), 'cluster.app.balance: must be one of "round_robin", "least_request", "random" (did you mean "least_request"?)'),
    "connect_timeout": (doc(cluster="connect_timeout = 0"), "cluster.app.connect_timeout: must be greater than 0"),
    "max_connections": (doc(cluster="max_connections = 0"), "cluster.app.max_connections: must be an integer >= 1"),
    "max_pending": (doc(cluster="max_pending = -1"), "cluster.app.max_pending: must be an integer >= 0"),
    "cluster idle_timeout": (doc(cluster='idle_timeout = "forever"'), f"cluster.app.idle_timeout: {DURATION}"),
    "breaker window": (doc(tail='[cluster.app.circuit_breaker]\nwindow = "1x"'), f"cluster.app.circuit_breaker.window: {DURATION}"),
    "breaker probes": (doc(tail="[cluster.app.circuit_breaker]\nhalf_open_requests = 0"), "cluster.app.circuit_breaker.half_open_requests: must be an integer >= 1"),
    "breaker typo": (doc(tail="[cluster.app.circuit_breaker]\nmax_failure = 1"), "cluster.app.circuit_breaker.max_failure: unknown key (did you mean 'max_failures'?)"),
    "breaker type": (doc(cluster="circuit_breaker = true"), "cluster.app.circuit_breaker: must be a table"),
    "outlier fraction": (doc(tail="[cluster.app.outlier]\nmax_ejected = 2"), "cluster.app.outlier.max_ejected: must be a number between 0 and 1"),
    "outlier failures": (doc(tail="[cluster.app.outlier]\nconsecutive_failures = 0"), "cluster.app.outlier.consecutive_failures: must be an integer >= 1"),
    "outlier eject_for": (doc(tail="[cluster.app.outlier]\neject_for = 0"), "cluster.app.outlier.eject_for: must be greater than 0"),
    "budget ratio": (doc(cluster="retry_budget = { ratio = 1.5 }"), "cluster.app.retry_budget.ratio: must be a number between 0 and 1"),
    "budget floor": (doc(cluster="retry_budget = { min_per_second = -1 }"), "cluster.app.retry_budget.min_per_second: must be a number between 0 and 100000"),
    "budget typo": (doc(route='cluster = "app"\nretry_budget = { ratios = 0.2 }'), "listener[0].route[0].retry_budget.ratios: unknown key (did you mean 'ratio'?)"),
    "budget type": (doc(route='cluster = "app"\nretry_budget = 0.2'), "listener[0].route[0].retry_budget: must be a table"),
    # transparent listeners (SPEC §13)
    "destination without transparent": (doc(route='destination = "10.96.0.10:9080"\ncluster = "app"'), "listener[0].route[0].destination: only allowed on a listener with transparent = true"),
    "original_destination without transparent": (doc(route='cluster = "original_destination"'), "listener[0].route[0].cluster: the built-in cluster original_destination is only allowed on a listener with transparent = true"),
    "detect_timeout without transparent": (doc(listener='detect_timeout = "50ms"'), "listener[0].detect_timeout: only allowed on a listener with transparent = true"),
    "destination syntax": (doc(listener="transparent = true", route='destination = "reviews:9080"\ncluster = "app"'), 'listener[0].route[0].destination: must be an address or CIDR with an optional port, like "10.96.0.10:9080", "10.96.0.0/12" or "[fd00::/8]:80"'),
    "destination port": (doc(listener="transparent = true", route='destination = "10.0.0.0/8:0"\ncluster = "app"'), "listener[0].route[0].destination: port must be a number between 1 and 65535"),
    "original_destination defined": (doc(tail='[cluster.original_destination]\nendpoints = ["127.0.0.1:1"]'), "cluster.original_destination: original_destination is built in (each connection's original destination) and cannot be defined"),
}


def test_a_transparent_listener_routes_by_destination_to_the_built_in_cluster():
    from fastproxy.config.compile import compile_snapshot
    config = loads(doc(listener='transparent = true\ndetect_timeout = "250ms"',
                       route='destination = "10.96.0.0/12:9080"\ncluster = "original_destination"'))
    snapshot = compile_snapshot(config)
    (listener,) = snapshot.listeners
    assert (listener.transparent, listener.detect_timeout) == (True, 0.25)
    assert listener.routes[0].destination == (0x0A600000, 12, 4, 9080)
    assert [(c.name, c.original) for c in snapshot.clusters] == [("app", False), ("original_destination", True)]


@pytest.mark.parametrize("text, expected", list(CASES.values()), ids=list(CASES))
def test_error(text, expected):
    assert errors(text) == ([expected] if isinstance(expected, str) else expected)


def test_every_error_of_a_file_is_reported_in_file_order():
    text = doc(
        top="[proxy]\nworkers = 0\n[limits]\nmax_headers = -1",
        route='cluster = "nope"\ntimeout = "x"',
        cluster='balance = "x"',
    )
    assert errors(text) == [
        'proxy.workers: must be an integer >= 1 or "auto"',
        "limits.max_headers: must be an integer >= 1",
        "listener[0].route[0].cluster: unknown cluster 'nope'",
        f"listener[0].route[0].timeout: {DURATION}",
        'cluster.app.balance: must be one of "round_robin", "least_request", "random"',
    ]


def test_error_object():
    with pytest.raises(ConfigError) as info:
        loads(doc(top="[proxy]\nworkers = 0\nadmin = 1"), "config/x.toml")
    error = info.value
    assert error.errors == [
        'config/x.toml: proxy.workers: must be an integer >= 1 or "auto"',
        f"config/x.toml: proxy.admin: {ADDRESS}",
    ]
    assert str(error) == "\n".join(error.errors)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.errors == error.errors and str(copy) == str(error)
    assert ConfigError("a: b").errors == ["a: b"]


# --- files and TOML syntax ---------------------------------------------------------------


def test_file_path_is_reported_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.toml").write_text(doc(route='cluster = "none"'))
    for given in ("sub/x.toml", "./sub/x.toml", pathlib.Path("sub/x.toml")):
        with pytest.raises(ConfigError) as info:
            load(given)
        assert info.value.errors == [f"{given}: listener[0].route[0].cluster: unknown cluster 'none'"]
    (tmp_path / "ok.toml").write_text(doc())
    assert load("ok.toml").path == "ok.toml"


def test_unreadable_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load("missing.toml")
    assert info.value.errors == ["missing.toml: cannot read: No such file or directory"]
    with pytest.raises(ConfigError) as info:
        load(".")
    assert info.value.errors == [".: cannot read: Is a directory"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[proxy\nworkers = 1\n", "x.toml: line 1, column 7: Expected ']' at the end of a table declaration"),
        ("[proxy]\nworkers = \n", "x.toml: line 2, column 11: Invalid value"),
        ('a = "abc', "x.toml: line 1, column 9: Unterminated string"),
        ("a = 1\na = 2\n", "x.toml: line 2, column 6: Cannot overwrite a value"),
        ("a = 1\na = 2", "x.toml: line 2, column 6: Cannot overwrite a value"),  # tomllib: "at end of document"
        (b"a = '\xff'\n", "x.toml: line 1, column 6: not valid UTF-8"),
        (b"\n\nb = '\xc3'\n", "x.toml: line 3, column 6: not valid UTF-8"),
        ("a = " + "[" * 100000, "x.toml: arrays or inline tables are nested too deeply"),
    ],
)
def test_toml_syntax_errors(text, expected):
    with pytest.raises(ConfigError) as info:
        loads(text, "x.toml")
    assert info.value.errors == [expected]


def test_validate_rejects_non_table():
    with pytest.raises(ConfigError) as info:
        validate(["not", "a", "table"], "d")
    assert info.value.errors == ["d: the document must be a TOML table"]


# --- summary ---------------------------------------------------------------------------


def test_summary_counts_and_plurals():
    config = loads(
        doc(
            top="[proxy]\nworkers = 2",
            routes='[[listener.route]]\ncluster = "b"',
            tail='[cluster.b]\nendpoints = ["b:1"]\n[[listener]]\nname = "in"\nbind = "[::]:15006"\n[[listener.route]]\ncluster = "b"',
        ),
        FILE,
    )
    assert summary(config) == "2 listeners (out 127.0.0.1:15001, in [::]:15006), 3 routes, 2 clusters, 2 workers"
    assert isinstance(config, Config)
