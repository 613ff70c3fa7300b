"""fastproxy's benchmark harness: `python -m bench` from the repository root.

It measures fastproxy, no proxy at all (direct) and every comparator it finds (Envoy,
nginx, HAProxy, and nghttpx for HTTP/2) on the same scenarios, pinned the same way, in one run, and writes
bench/results/<timestamp>/ with results.md, results.json and PNG charts.

Modules, one concern each:
  cli          command line (`python -m bench --help`)
  runner       the run: backend, scenarios, rounds, progress, writing results
  scenarios    what traffic each scenario sends, and how long each mode runs
  contenders   fastproxy / Envoy / nginx / HAProxy / nghttpx / direct deployments (configs
               from templates/)
  backend      the nginx `return 200` backend, or the built-in fallback (builtin_backend);
               the nghttpd gRPC backend
  loadgen      wrk (closed loop), h2load (HTTP/2, gRPC) and the fixed-rate open loop (openloop)
  verify       the check before measuring: does each deployment do the scenario's job
  procstat     proxy CPU time and peak RSS from /proc, over the whole process tree
  processes    starting, pinning (taskset) and reliably stopping processes
  certs        throw-away CA and SPIFFE-shaped certificates for the TLS scenarios
  report       medians, min-max, ratios; results.json and results.md
  charts       PNG charts (matplotlib, Agg)
  tools        finding the tools (wrk, h2load, the proxies, taskset, openssl), versions,
               install hints, machine info
  tls_costs    `python -m bench.tls_costs`: full TLS handshakes per proxy CPU-second and
               memory per idle TLS connection, on the tls scenario's deployment
"""
