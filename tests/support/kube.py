"""A Kubernetes cluster's side of service-account identities, for tests without a
cluster: the issuer's signing key, its JWKS (what `kubectl get --raw /openid/v1/jwks`
gives), and the projected tokens kubelet would mount for a Pod.

  key = cluster_key()
  jwks_json(key, kid="cluster-1")              -> the JWKS text for [ca.kubernetes] jwks
  sa_token(key, "shop", "reviews", ...)        -> a signed token (audience, expiry, issuer,
                                                  kid and algorithm may be made wrong)
"""
from __future__ import annotations

import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"


def cluster_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_json(key: rsa.RSAPrivateKey, kid: str = "cluster-1") -> str:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]})


def sa_token(key, namespace: str, name: str, *, kid: str = "cluster-1", audience: str = "fastproxy-ca",
             expires_in: float = 600, issuer: str = CLUSTER_ISSUER, algorithm: str = "RS256") -> str:
    """A projected service-account token as kubelet mounts it, signed with `key`."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": [audience], "sub": f"system:serviceaccount:{namespace}:{name}",
              "iat": now, "nbf": now, "exp": now + int(expires_in),
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "u-1"},
                                "pod": {"name": f"{name}-0", "uid": "p-1"}}}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})
