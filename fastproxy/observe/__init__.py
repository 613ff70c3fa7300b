"""Observability: what the core reports about each request, and where it goes.

The Cython core counts every request into shared-memory metrics (`metrics` renders them at
scrape time), writes the access log lines itself into a buffer, and appends a `Record`
only for the requests something else wants (a sampled span to export, or a failure) to a
bounded buffer. `records.Drain` takes both off the hot path on a timer and hands them on:
the lines to `accesslog`'s writer thread, spans to `tracing`'s exporter, failures to the
shared rings of `failed` that the admin API's /requests/failed reads.
"""
