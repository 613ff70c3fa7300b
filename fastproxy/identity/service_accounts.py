"""Kubernetes projected service-account tokens as credentials for `fastproxy ca serve`
(SPEC §13, `[ca.kubernetes]`): a pod presents the token kubelet mounts for it (audience
`fastproxy-ca`), and may obtain only `spiffe://<trust domain>/ns/<namespace>/sa/<name>`
of that token. The JWT is checked with PyJWT against the cluster issuer's keys, read
from a JWKS file at start: signature (asymmetric algorithms only), audience, expiry,
not-before, and the issuer when one is configured.
"""
from __future__ import annotations

import re

import jwt

# DNS-1123 labels (namespaces) and subdomains (service account names)
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


class ServiceAccountError(Exception):
    """The JWKS file cannot be used (one line, for the configuration error)."""


class ServiceAccounts:
    def __init__(self, jwks_text: str, trust_domain: str, audience: str = "fastproxy-ca",
                 issuer: str | None = None) -> None:
        try:
            keys = jwt.PyJWKSet.from_json(jwks_text).keys
        except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as exc:
            raise ServiceAccountError(f"not a usable JWKS: {exc}") from None
        self.keys = {key.key_id: key for key in keys}
        self.trust_domain = trust_domain
        self.audience = audience
        self.issuer = issuer

    def verify(self, token: str) -> tuple[str, str]:
        """(a name for the logs, the one SPIFFE id the token may obtain); raises
        ValueError saying why the token is refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise ValueError("not a JWT") from None
        kid = header.get("kid")
        if kid is not None:
            key = self.keys.get(kid)
        else:                        # no kid: only a JWKS of one key says which
            key = next(iter(self.keys.values())) if len(self.keys) == 1 else None
        if key is None:
            raise ValueError(f"signed with an unknown key (kid {header.get('kid')!r})")
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm {algorithm!r} is not accepted")
        try:
            claims = jwt.decode(token, key.key, algorithms=[algorithm], audience=self.audience,
                                issuer=self.issuer, options={"require": ["exp", "aud", "iss"]})
        except jwt.ExpiredSignatureError:
            raise ValueError("expired") from None
        except jwt.InvalidAudienceError:
            raise ValueError(f"not for audience {self.audience}") from None
        except jwt.InvalidIssuerError:
            raise ValueError(f"not from issuer {self.issuer}") from None
        except jwt.InvalidSignatureError:
            raise ValueError("the signature does not verify") from None
        except jwt.InvalidTokenError as exc:
            raise ValueError(str(exc)) from None
        k8s = claims.get("kubernetes.io")
        account = k8s.get("serviceaccount") if isinstance(k8s, dict) else None
        namespace = k8s.get("namespace") if isinstance(k8s, dict) else None
        name = account.get("name") if isinstance(account, dict) else None
        if not (isinstance(namespace, str) and _LABEL.fullmatch(namespace)
                and isinstance(name, str) and _SUBDOMAIN.fullmatch(name)):
            raise ValueError("no kubernetes.io namespace and service account in the token")
        return f"kubernetes:{namespace}/{name}", f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{name}"
