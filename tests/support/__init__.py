"""Helpers shared by the end-to-end tests: process control, a raw HTTP/1.1 client, and
the upstream servers (real programs started in subprocesses).

Nothing here imports fastproxy: the tests drive it only from the outside, as a user would.
"""
