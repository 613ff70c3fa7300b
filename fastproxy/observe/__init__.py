"""Observability: what the core reports about each request, and where it goes.

The Cython core appends one `Record` per request it must report (access log on, span
sampled, or a failure) to a bounded buffer; `records.Drain` takes them off the hot path
on a timer and hands them to the access log, the span exporter and the failed-request
ring. Metrics do not go through records: the core counts them in shared memory and
`metrics` renders them at scrape time.
"""
