"""Workload identity: SPIFFE ids, the mesh CA, X.509-SVIDs (docs/identity.md).

This package owns everything about *who* a workload is, independent of how bytes move:

- `spiffe`  — SPIFFE-ID syntax (`parse_spiffe_id`, `SpiffeId`) and authorization patterns
              (`id_allowed`: "*", exact ids, "spiffe://TD/prefix/*").
- `ca`      — the mesh root CA on disk (`init_ca`, `CA.load`), issuing workload SVIDs
              (`CA.issue_svid`, `issue_files`) and the CA service's own server certificate.
- `svid`    — the X509-SVID rules for a peer or own certificate (`svid_id`) and loading a
              cert/key/trust triple as one validated unit (`load_material`, `Material`).
- `cli`     — `fastproxy ca init` / `fastproxy ca issue`.
- `ca_server`, `issuer` — `fastproxy ca serve` and automatic issuance in the sidecar.
- `tls`     — SSL contexts for the core (listeners and clusters).

Nothing here touches the event loop or the hot path: it is called when material is loaded
or rotated, and once per TLS connection to check the peer.
"""
