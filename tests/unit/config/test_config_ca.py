"""The `fastproxy ca serve` file (fastproxy.config.load_ca)."""

import pathlib
import tomllib

import pytest

from fastproxy.config import Address, CAToken, ConfigError, load_ca
from fastproxy.config.ca import validate_ca

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_example_ca_file():
    ca = load_ca(REPO / "config/ca.toml")
    assert (ca.dir, ca.bind, ca.ttl) == ("certs/ca", Address("127.0.0.1", 8443), 86400.0)
    assert ca.tokens == (
        CAToken(
            ids=("spiffe://mesh.local/ns/default/sa/web", "spiffe://mesh.local/ns/jobs/*"),
            token_file="secrets/web.token",
        ),
    )


def test_defaults_and_inline_tokens():
    ca = validate_ca(tomllib.loads('[ca]\ndir = "d"\nbind = "[::1]:8443"\n[[ca.token]]\ntoken = "s3cret"\nids = ["spiffe://m/*"]\n'))
    assert ca.ttl == 86400.0 and ca.tokens[0].token == "s3cret" and ca.tokens[0].token_file is None


def test_server_names_for_the_ca_certificate():
    base = '[ca]\ndir = "d"\nbind = "0.0.0.0:8443"\n[ca.kubernetes]\njwks = "j.json"\n'
    ca = validate_ca(tomllib.loads(base.replace("[ca]\n", '[ca]\nserver_names = ["fastproxy-ca.fastproxy-system.svc"]\n')))
    assert ca.server_names == ("fastproxy-ca.fastproxy-system.svc",) and ca.tokens == ()
    with pytest.raises(ConfigError, match="ca.server_names: must not be empty"):
        validate_ca(tomllib.loads(base.replace("[ca]\n", "[ca]\nserver_names = []\n")))
    with pytest.raises(ConfigError, match=r'ca.server_names\[1\]: "https://x" is not a valid IP address or DNS name'):
        validate_ca(tomllib.loads(base.replace("[ca]\n", '[ca]\nserver_names = ["ok.svc", "https://x"]\n')))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", ["ca: is required"]),
        ('[ca]\ndir = "d"\nbind = "127.0.0.1:1"\n', ["ca.token: at least one [[ca.token]] (or [ca.kubernetes]) is required"]),
        (
            '[proxy]\n[ca]\ndir = "d"\nbind = "x"\nttl = "1y"\n[[ca.token]]\nids = ["spiffe://m/a"]\n',
            [
                "proxy: unknown key (a `ca serve` file has only [ca])",
                'ca.bind: must be an address like "127.0.0.1:15001", "name:80" or "[::1]:15001" (the port is missing)',
                'ca.ttl: must be a duration like "250ms", "10s", "1m"',
                'ca.token[0]: needs exactly one of "token" or "token_file"',
            ],
        ),
        (
            '[ca]\nbind = "127.0.0.1:1"\n[[ca.token]]\ntoken = "a"\ntoken_file = "f"\nids = []\n'
            '[[ca.token]]\ntoken = "b"\nids = ["spiffe://m/a", "*"]\n[[ca.token]]\ntoken = "b"\nids = ["spiffe://m/b"]\n',
            [
                "ca.dir: is required",
                "ca.token[0].ids: must not be empty",
                'ca.token[0]: needs exactly one of "token" or "token_file"',
                'ca.token[1].ids[1]: "*" is not a valid SPIFFE id: it must start with "spiffe://"',
                "ca.token[2].token: same token as ca.token[1]",
            ],
        ),
    ],
)
def test_ca_errors(tmp_path, text, expected):
    path = tmp_path / "ca.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_ca(str(path))
    assert info.value.errors == [f"{path}: {line}" for line in expected]
