"""fastproxy._core.tls.TLSContext: which ssl.SSLContexts the core's TLS accepts.

The links themselves are tested end to end (tests/integration/test_tls_core.py, test_mtls.py,
test_rotation.py): real handshakes with Python's ssl on the other side."""
import ssl

import pytest

from fastproxy._core.tls import TLSContext


def test_server_and_client_contexts_are_told_apart():
    assert TLSContext(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).server
    assert not TLSContext(ssl.create_default_context()).server


def test_the_python_context_is_kept_alive_with_it():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    assert TLSContext(ctx).context is ctx


@pytest.mark.parametrize("setup", [
    lambda c: setattr(c, "sni_callback", lambda *a: None),
    lambda c: setattr(c, "keylog_filename", "/dev/null"),
], ids=["sni_callback", "keylog_filename"])
def test_python_callbacks_that_expect_python_sockets_are_refused(setup):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    setup(ctx)
    with pytest.raises(ValueError, match="sni_callback"):
        TLSContext(ctx)


def test_only_ssl_contexts():
    with pytest.raises(TypeError):
        TLSContext(object())
