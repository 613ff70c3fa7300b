"""Bad input never escapes as anything but ConfigError (hypothesis).

Three sources of input: random TOML-ish documents built from the schema's own keys, the
full example with random parts replaced or deleted (reaching every nested table), and
random text through the TOML parser. A document that validates must also be coherent:
every route's clusters exist, and summary() works.
"""

import copy
import datetime
import os
import pathlib
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy.config import Config, ConfigError, loads, summary, validate
from fastproxy.config import loader

REPO = pathlib.Path(__file__).resolve().parents[3]
EXAMPLE = tomllib.loads((REPO / "config/example-full.toml").read_text())
NAME = "<fuzz>"

SCHEMA_KEYS = sorted(
    set(loader.TOP_LEVEL)
    | set(loader.PROXY) | set(loader.LIMITS) | set(loader.IDENTITY) | set(loader.TRACING)
    | set(loader.LISTENER) | set(loader.ROUTE) | set(loader.CLUSTER)
    | set(loader.CIRCUIT_BREAKER) | set(loader.OUTLIER)
    | {"cluster", "split", "weight", "app", "b"}
)
STRINGS = [
    "", "auto", "10s", "0s", "1m30s", "-1s", "127.0.0.1:80", "[::1]:80", "0.0.0.0:15001", "x:0",
    "127.0.0.1:9901", "off", "tls", "mtls", "inbound", "outbound", "*", "spiffe://mesh.local/x",
    "spiffe://mesh.local/*", "spiffe://Mesh/x", "/", "/a?b", "GET", "get", "app", "b", "w3c",
    "b3", "5xx", "reset", "round_robin", "random", "otlp+http://h:1", "https://ca:1", "*.example.com",
    "reviews-v1", "reviews-v2", "x\ny", "\x00",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=2000),
    st.floats(),
    st.sampled_from(STRINGS),
    st.text(max_size=8),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.just(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)),
)
keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.text(max_size=6))
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=40,
)
documents = st.dictionaries(st.sampled_from(loader.TOP_LEVEL + ("x",)), values, max_size=6)

# Kept small so the unit suite stays fast; FASTPROXY_FUZZ_EXAMPLES=20000 for a long run.
EXAMPLES = int(os.environ.get("FASTPROXY_FUZZ_EXAMPLES", "80"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def check(document) -> None:
    try:
        config = validate(document, NAME)
    except ConfigError as error:
        assert error.errors, "a ConfigError must say what is wrong"
        assert all(isinstance(line, str) and line.startswith(f"{NAME}: ") for line in error.errors)
        assert "Traceback" not in str(error)
        return
    assert isinstance(config, Config)
    summary(config)
    for listener in config.listeners:
        assert listener.routes
        for route in listener.routes:
            assert route.clusters and all(name in config.clusters for name in route.clusters)
            assert (route.cluster is None) != (not route.split)


@FAST
@given(documents)
def test_random_documents(document):
    check(document)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, prefix + (key,))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, prefix + (index,))


EXAMPLE_PATHS = list(_paths(EXAMPLE))[1:]
DELETE = object()


def _mutate(document, path, value):
    parent = document
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return
    if not isinstance(parent, (dict, list)):
        return
    last = path[-1]
    if isinstance(parent, dict) != isinstance(last, str):
        return
    if isinstance(parent, list) and last >= len(parent):
        return
    if value is not DELETE:
        parent[last] = value
    elif isinstance(parent, list):
        del parent[last]
    else:
        parent.pop(last, None)


def test_example_is_valid():
    check(EXAMPLE)
    validate(EXAMPLE, NAME)


@FAST
@given(st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), st.one_of(st.just(DELETE), values)), min_size=1, max_size=4))
def test_mutated_full_example(mutations):
    document = copy.deepcopy(EXAMPLE)
    for path, value in mutations:
        _mutate(document, path, value)
    check(document)


TOML_LINES = (REPO / "config/example-full.toml").read_text().splitlines()


@FAST
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(TOML_LINES), max_size=40).map("\n".join)))
def test_random_text(text):
    try:
        loads(text, NAME)
    except ConfigError as error:
        assert all(line.startswith(f"{NAME}: ") for line in error.errors)
