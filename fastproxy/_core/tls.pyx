"""TLS records in the core: OpenSSL driven directly from Cython over uvloop's TCP transports.

Owns `TLSLink`, one TLS connection: it is the protocol of a plain uvloop TCP transport
below and the transport of the proxy's own protocol (`Downstream`, `Upstream`) above.
Ciphertext goes through two memory BIOs; plaintext is read with SSL_read into one buffer
and handed up as bytes. Nothing per record goes through Python's `ssl` objects, which is
where uvloop's SSL layer spends its time.

The contexts stay `ssl.SSLContext`s, configured in `fastproxy.identity.tls` with the
standard library; `TLSContext` borrows the SSL_CTX inside one. That is safe because this
module links the same libssl as Python's `_ssl` (checked at import) and because the
contexts handed here carry no Python callback that expects a Python SSL socket
(`sni_callback`, `keylog_filename` and `_msg_callback` are refused).
"""
import ipaddress
import ssl

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.object cimport PyObject

cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    ctypedef struct X509
    ctypedef struct X509_VERIFY_PARAM
    ctypedef struct SSL_SESSION
    ctypedef struct SSL_METHOD

    unsigned long OpenSSL_version_num()
    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* s)
    void SSL_set_bio(SSL* s, BIO* rbio, BIO* wbio)
    void SSL_set_accept_state(SSL* s)
    void SSL_set_connect_state(SSL* s)
    long SSL_set_mode(SSL* s, long mode)
    long SSL_set_tlsext_host_name(SSL* s, char* name)
    X509_VERIFY_PARAM* SSL_get0_param(SSL* s)
    int SSL_do_handshake(SSL* s)
    int SSL_read(SSL* s, void* buf, int num)
    int SSL_write(SSL* s, const void* buf, int num)
    int SSL_pending(const SSL* s)
    int SSL_shutdown(SSL* s)
    int SSL_get_error(const SSL* s, int ret)
    int SSL_session_reused(const SSL* s)
    void SSL_get0_alpn_selected(const SSL* s, const unsigned char** data, unsigned int* len)
    SSL_SESSION* SSL_get0_session(const SSL* s)
    SSL_SESSION* SSL_get1_session(SSL* s)
    int SSL_set_session(SSL* s, SSL_SESSION* session)
    int SSL_SESSION_is_resumable(const SSL_SESSION* session)
    void SSL_SESSION_free(SSL_SESSION* session)
    long SSL_get_verify_result(const SSL* s)
    X509* SSL_get1_peer_certificate(const SSL* s)
    int SSL_CTX_get_verify_mode(const SSL_CTX* ctx)
    unsigned long SSL_CTX_get_options(const SSL_CTX* ctx)
    const SSL_METHOD* SSL_CTX_get_ssl_method(const SSL_CTX* ctx)
    const SSL_METHOD* TLS_method()
    const SSL_METHOD* TLS_client_method()
    const SSL_METHOD* TLS_server_method()

    enum:
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_VERIFY_PEER
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_MODE_AUTO_RETRY
        SSL_MODE_RELEASE_BUFFERS
        SSL_R_CERTIFICATE_VERIFY_FAILED

cdef extern from "openssl/bio.h" nogil:
    BIO* BIO_new(const BIO_METHOD* method)
    int BIO_free(BIO* b)
    const BIO_METHOD* BIO_s_mem()
    int BIO_write(BIO* b, const void* data, int dlen)
    int BIO_read(BIO* b, void* data, int dlen)
    size_t BIO_ctrl_pending(BIO* b)

cdef extern from "openssl/x509.h" nogil:
    int X509_VERIFY_PARAM_set1_host(X509_VERIFY_PARAM* param, const char* name, size_t namelen)
    int X509_VERIFY_PARAM_set1_ip(X509_VERIFY_PARAM* param, const unsigned char* ip, size_t iplen)
    int i2d_X509(X509* x, unsigned char** out)
    void X509_free(X509* x)
    const char* X509_verify_cert_error_string(long n)
    enum:
        X509_V_OK

cdef extern from "openssl/err.h" nogil:
    unsigned long ERR_peek_last_error()
    void ERR_clear_error()
    const char* ERR_reason_error_string(unsigned long e)
    int ERR_GET_REASON(unsigned long e)

cdef extern from "openssl/crypto.h" nogil:
    void OPENSSL_free(void* p)


# The SSL_CTX pointer is the first field of CPython's PySSLContext (Modules/_ssl.c, every
# version since 3.0). TLSContext checks what it reads against the Python object.
ctypedef struct PySSLContextHead:
    PyObject ob_base
    SSL_CTX* ctx

if OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
    raise ImportError(
        f"fastproxy._core.tls is linked with OpenSSL {OpenSSL_version_num():#x} but Python's ssl "
        f"uses {ssl.OPENSSL_VERSION} ({ssl.OPENSSL_VERSION_NUMBER:#x}): rebuild fastproxy "
        "(make build) against the libssl Python uses")

cdef enum:
    READ_CHUNK = 65536       # plaintext handed up at most at once
    WRITE_PIECE = 1 << 30    # plaintext given to SSL_write at most at once

cdef enum:
    L_NEW = 0                # no TCP connection yet
    L_HANDSHAKE = 1
    L_OPEN = 2               # handshake done: the app has the connection
    L_CLOSED = 3

cdef char read_buffer[READ_CHUNK]   # one per process: SSL_read fills it, bytes leave it


class TLSError(ConnectionError):
    """A TLS handshake or record failed. `reason` is OpenSSL's, in words."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


cdef str openssl_error(SSL* s, int err):
    """The words for an SSL_get_error result, with the certificate check's when it failed."""
    cdef unsigned long e = ERR_peek_last_error()
    cdef const char* text
    cdef long verify
    if err == SSL_ERROR_SSL and e != 0:
        text = ERR_reason_error_string(e)
        why = text.decode() if text is not NULL else f"error {e:#x}"
        if ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED and s is not NULL:
            verify = SSL_get_verify_result(s)
            if verify != X509_V_OK:
                why += ": " + X509_verify_cert_error_string(verify).decode()
    elif err == SSL_ERROR_SYSCALL or err == SSL_ERROR_SSL:
        why = "TLS failed (OpenSSL gave no reason)"
    else:
        why = f"unexpected SSL_get_error {err}"
    ERR_clear_error()
    return why


cdef class TLSContext:
    """The SSL_CTX of an `ssl.SSLContext`, ready for links. Holds the Python object, whose
    ALPN callback OpenSSL calls with it as argument."""
    cdef readonly object context
    cdef SSL_CTX* ctx
    cdef readonly bint server
    cdef bint check_hostname

    def __init__(self, context):
        cdef const SSL_METHOD* method
        if not isinstance(context, ssl.SSLContext):
            raise TypeError("an ssl.SSLContext is needed")
        if context.sni_callback is not None or context.keylog_filename is not None \
                or getattr(context, "_msg_callback", None) is not None:
            # OpenSSL would call them with our SSL objects, where CPython expects its own
            raise ValueError("TLS contexts of the core cannot have sni_callback, "
                             "keylog_filename or _msg_callback")
        self.context = context
        self.ctx = (<PySSLContextHead*><PyObject*>context).ctx
        method = SSL_CTX_get_ssl_method(self.ctx) if self.ctx is not NULL else NULL
        if method != TLS_method() and method != TLS_client_method() and method != TLS_server_method():
            # the methods are static objects of one libssl: another copy (a Python with its
            # own OpenSSL) has others
            raise RuntimeError("Python's ssl module uses another copy of OpenSSL than "
                               "fastproxy's TLS core: rebuild fastproxy against it")
        if SSL_CTX_get_options(self.ctx) != <unsigned long>context.options \
                or bool(SSL_CTX_get_verify_mode(self.ctx) & SSL_VERIFY_PEER) \
                != (context.verify_mode != ssl.CERT_NONE):
            raise RuntimeError("this Python's ssl.SSLContext layout is not the one fastproxy "
                               "knows: its TLS core cannot use it")
        self.server = context.protocol == ssl.PROTOCOL_TLS_SERVER
        self.check_hostname = context.check_hostname


cdef class TLSSession:
    """A client session to offer on the next connection to the same server (resumption
    skips the certificates' signatures on both sides), with the context it came from."""
    cdef SSL_SESSION* session
    cdef TLSContext context
    cdef str server_name             # resumption skips the name check: only for this name

    def __dealloc__(self):
        if self.session is not NULL:
            SSL_SESSION_free(self.session)


cdef class TLSLink:
    """One TLS connection: uvloop's TCP transport below, `app` (an asyncio Protocol) above.

    The app learns of the connection (connection_made) once the handshake is done and then
    uses the link as its transport. A client link reports the handshake's outcome once to
    `on_handshake(link, error)`; a server link whose handshake fails never calls its app.
    A client link with a `session_store` (anything with a `tls_session` attribute: the
    endpoint) offers the session kept there and keeps there the one it gets.
    """
    cdef SSL* ssl
    cdef BIO* rbio                  # ciphertext received, owned by ssl
    cdef BIO* wbio                  # ciphertext to send, owned by ssl
    cdef readonly object app
    cdef readonly TLSContext context
    cdef object raw                 # the TCP transport
    cdef object raw_write
    cdef object loop
    cdef str server_name            # client links: SNI and the name checked
    cdef double timeout             # server links: seconds the handshake may take (0: none)
    cdef object timer
    cdef public object on_handshake
    cdef public object select_app   # client links: link -> the app, once ALPN has settled
    cdef object session_store       # client links: where the session to resume is kept
    cdef TLSSession offered         # the session this link offered, if any
    cdef int state
    cdef bint reading_paused
    cdef bint resume_scheduled
    cdef bint made                  # the app has had connection_made
    cdef object error               # why the connection failed, for the app's connection_lost
    cdef bint eof_held              # the peer's FIN came with records still to hand up
    cdef bint eof_told              # the app had eof_received (once, as asyncio's)
    cdef bint eof_keep              # and its answer

    def __init__(self, TLSContext context, app, loop, str server_name=None,
                 on_handshake=None, double timeout=0.0, session_store=None):
        self.context = context
        self.app = app
        self.loop = loop
        self.server_name = server_name
        self.on_handshake = on_handshake
        self.timeout = timeout
        self.session_store = session_store

    def __dealloc__(self):
        self.free()

    # the TCP transport's protocol --------------------------------------------------------
    def connection_made(self, transport):
        cdef SSL* s = SSL_new(self.context.ctx)
        if s is NULL:
            ERR_clear_error()
            transport.abort()
            raise MemoryError("SSL_new")
        self.ssl = s
        self.raw = transport
        self.raw_write = transport.write
        self.rbio = BIO_new(BIO_s_mem())
        self.wbio = BIO_new(BIO_s_mem())
        if self.rbio is NULL or self.wbio is NULL:
            BIO_free(self.rbio)
            BIO_free(self.wbio)
            ERR_clear_error()
            transport.abort()
            raise MemoryError("BIO_new")
        SSL_set_bio(s, self.rbio, self.wbio)
        SSL_set_mode(s, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY
                     | SSL_MODE_RELEASE_BUFFERS)
        self.state = L_HANDSHAKE
        if self.context.server:
            SSL_set_accept_state(s)
            if self.timeout > 0:
                self.timer = self.loop.call_later(self.timeout, self.handshake_timeout)
        else:
            if not self.set_server_name():
                ERR_clear_error()
                self.fail(TLSError(f"cannot check the server's name {self.server_name!r}"))
                return
            self.offer_session()
            SSL_set_connect_state(s)
        self.handshake()

    def data_received(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.state == L_CLOSED or self.state == L_NEW:
            return
        if BIO_write(self.rbio, PyBytes_AS_STRING(data), <int>n) != n:
            self.fail(TLSError("out of memory for received TLS records"))
            return
        if self.state == L_HANDSHAKE:
            self.handshake()
        else:
            self.read_records()

    def eof_received(self):
        if self.state == L_HANDSHAKE:
            self.fail(ConnectionResetError("the peer closed the connection during the TLS handshake"))
            return False
        if self.state == L_OPEN:
            if not self.reading_paused and self.buffered():
                self.read_records()   # what came before the end goes up first
            if self.state == L_OPEN:
                if self.buffered():   # paused meanwhile: the end waits for the rest
                    self.eof_held = True
                    return True
                return self.tell_eof()
        return False

    def connection_lost(self, exc):
        cdef int was = self.state
        self.mark_closed()
        if self.made:
            self.app.connection_lost(self.error if self.error is not None else exc)
        elif was == L_HANDSHAKE:
            self.report(exc if exc is not None else
                        ConnectionResetError("the connection closed during the TLS handshake"))
        self.free()
        # the app holds this link as its transport: part the two, as uvloop parts from us
        self.app = self.raw = self.raw_write = self.on_handshake = self.session_store = None
        self.select_app = None

    def pause_writing(self):
        if self.made:
            self.app.pause_writing()

    def resume_writing(self):
        if self.made:
            self.app.resume_writing()

    # the app's transport -----------------------------------------------------------------
    def write(self, data):
        cdef bytes b = data if type(data) is bytes else bytes(data)
        cdef Py_ssize_t done = 0, n = PyBytes_GET_SIZE(b)
        cdef int r
        if self.state != L_OPEN:
            return
        while done < n:   # SSL_write takes an int: a huge write goes in pieces
            ERR_clear_error()
            r = SSL_write(self.ssl, PyBytes_AS_STRING(b) + done, <int>min(n - done, WRITE_PIECE))
            if r <= 0:
                self.fail(TLSError(openssl_error(self.ssl, SSL_get_error(self.ssl, r))))
                return
            done += r
            self.flush()

    def close(self):
        """Send close_notify and close; the app's connection_lost follows, as asyncio's."""
        if self.state == L_OPEN:
            SSL_shutdown(self.ssl)   # ours only: waiting for the peer's gains nothing
            ERR_clear_error()
            self.flush()
        if self.state != L_CLOSED and self.raw is not None:
            self.mark_closed()
            self.raw.close()

    def abort(self):
        if self.raw is not None:
            self.mark_closed()
            self.raw.abort()

    def is_closing(self):
        return self.state != L_OPEN

    def pause_reading(self):
        if not self.reading_paused:
            self.reading_paused = True
            if self.raw is not None:
                self.raw.pause_reading()

    def resume_reading(self):
        if self.reading_paused:
            self.reading_paused = False
            if self.raw is not None and self.state == L_OPEN:
                self.raw.resume_reading()
                if not self.resume_scheduled and (self.buffered() or self.eof_held):
                    # records that came before the pause: hand them up from the loop, not
                    # from inside the app's call
                    self.resume_scheduled = True
                    self.loop.call_soon(self.read_held)

    def can_write_eof(self):
        return False

    def write_eof(self):
        raise NotImplementedError("TLS connections cannot half-close")

    def get_write_buffer_size(self):
        return self.raw.get_write_buffer_size() if self.raw is not None else 0

    def get_extra_info(self, name, default=None):
        return self.raw.get_extra_info(name, default) if self.raw is not None else default

    def peer_certificate(self):
        """The peer's certificate (DER) as OpenSSL verified it, or None."""
        cdef X509* cert
        cdef unsigned char* der = NULL
        cdef int n
        if self.ssl is NULL:
            return None
        cert = SSL_get1_peer_certificate(self.ssl)
        if cert is NULL:
            return None
        n = i2d_X509(cert, &der)
        X509_free(cert)
        if n <= 0:
            ERR_clear_error()
            return None
        out = PyBytes_FromStringAndSize(<char*>der, n)
        OPENSSL_free(der)
        return out

    def session_reused(self):
        return self.ssl is not NULL and SSL_session_reused(self.ssl) == 1

    def selected_alpn_protocol(self):
        """The protocol ALPN settled ("h2", "http/1.1"), or None (as ssl.SSLObject's)."""
        cdef const unsigned char* p = NULL
        cdef unsigned int n = 0
        if self.ssl is not NULL:
            SSL_get0_alpn_selected(self.ssl, &p, &n)
        return p[:n].decode("ascii") if n else None

    # internals ---------------------------------------------------------------------------
    cdef bint set_server_name(self) except -1:
        """SNI and, when the context checks names, the name or address to check (as
        CPython does). False: OpenSSL refused the name."""
        name = self.server_name
        if not name:
            return True
        try:
            ip = ipaddress.ip_address(name).packed
        except ValueError:
            ip = None
        encoded = name.encode("idna") if ip is None else None
        if ip is None and not SSL_set_tlsext_host_name(self.ssl, encoded):
            return False
        if self.context.check_hostname:
            if ip is None:
                return X509_VERIFY_PARAM_set1_host(SSL_get0_param(self.ssl), encoded, len(encoded)) == 1
            return X509_VERIFY_PARAM_set1_ip(SSL_get0_param(self.ssl), ip, len(ip)) == 1
        return True

    cdef void offer_session(self):
        cdef TLSSession held
        if self.session_store is None:
            return
        held = getattr(self.session_store, "tls_session", None)
        # not across a rotation, nor for another name (resuming skips the name check)
        if held is not None and held.context is self.context and held.server_name == self.server_name:
            if SSL_set_session(self.ssl, held.session):
                self.offered = held
            ERR_clear_error()

    cdef void keep_session(self):
        """Once per connection: the session, as soon as it can be resumed."""
        cdef TLSSession kept
        cdef SSL_SESSION* current = SSL_get0_session(self.ssl)
        if current is NULL or not SSL_SESSION_is_resumable(current) \
                or (self.offered is not None and current == self.offered.session):
            return   # a resumed TLS 1.3 session is replaced by its new ticket a little later
        kept = TLSSession.__new__(TLSSession)
        kept.session = SSL_get1_session(self.ssl)
        kept.context = self.context
        kept.server_name = self.server_name
        self.session_store.tls_session = kept
        self.session_store = None

    cdef void handshake(self):
        cdef int r
        cdef int err
        ERR_clear_error()   # a stale error would turn WANT_READ into a failure
        r = SSL_do_handshake(self.ssl)
        err = SSL_get_error(self.ssl, r) if r != 1 else SSL_ERROR_NONE
        self.flush()
        if r == 1:
            self.state = L_OPEN
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.made = True
            if self.session_store is not None:
                self.keep_session()
            if self.select_app is not None:
                self.app = self.select_app(self)
                self.select_app = None
            self.app.connection_made(self)
            self.report(None)
            if self.state == L_OPEN:
                self.read_records()   # application data that came with the last flight
            return
        if err == SSL_ERROR_WANT_READ:
            return
        self.fail(TLSError(openssl_error(self.ssl, err)))

    cdef void report(self, error):
        cb = self.on_handshake
        if cb is not None:
            self.on_handshake = None
            cb(self, error)

    cdef void read_records(self):
        """Decrypt what has arrived and hand the plaintext up, until the app pauses."""
        cdef int r = 0
        cdef int n
        cdef int err
        while self.state == L_OPEN and not self.reading_paused:
            n = 0
            err = SSL_ERROR_NONE
            ERR_clear_error()
            while n < READ_CHUNK:
                r = SSL_read(self.ssl, read_buffer + n, READ_CHUNK - n)
                if r <= 0:
                    # now: the app's writes below would change what SSL_get_error says
                    err = SSL_get_error(self.ssl, r)
                    break
                n += r
            if self.session_store is not None:
                self.keep_session()   # a TLS 1.3 ticket comes after the handshake
            if n > 0:
                self.app.data_received(PyBytes_FromStringAndSize(read_buffer, n))
            if err == SSL_ERROR_NONE:
                continue        # the buffer was full: there may be more
            if self.state != L_OPEN:
                return
            if BIO_ctrl_pending(self.wbio):
                self.flush()    # a post-handshake reply (key update)
            if err == SSL_ERROR_WANT_READ:
                if self.eof_held:   # the peer's FIN, held back until now
                    self.eof_held = False
                    if not self.tell_eof():
                        self.close()
                return
            if err == SSL_ERROR_ZERO_RETURN:   # the peer's close_notify
                ERR_clear_error()
                if not self.tell_eof():
                    self.close()
                return
            self.fail(TLSError(openssl_error(self.ssl, err)))
            return

    def read_held(self):
        self.resume_scheduled = False
        if self.state == L_OPEN:
            self.read_records()

    cdef inline bint buffered(self):
        """Records received and not yet handed up."""
        return BIO_ctrl_pending(self.rbio) > 0 or SSL_pending(self.ssl) > 0

    cdef bint tell_eof(self) except -1:
        """The app hears of the end of the peer's data once; its answer (keep the
        connection open for writing) stands for later ends (FIN after close_notify)."""
        if not self.eof_told:
            self.eof_told = True
            self.eof_keep = bool(self.app.eof_received())
        return self.eof_keep

    cdef void flush(self):
        cdef size_t n = BIO_ctrl_pending(self.wbio)
        cdef int got
        if n:   # at most what one SSL_write piece made
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
            got = BIO_read(self.wbio, PyBytes_AS_STRING(out), <int>n)
            self.raw_write(out if got == <int>n else out[:max(got, 0)])

    cdef void fail(self, error):
        """The TLS connection cannot go on: close it; the app (or the handshake's waiter)
        hears `error`."""
        if self.state == L_CLOSED:
            return
        if self.state == L_HANDSHAKE:
            self.report(error)
        else:
            self.error = error
        self.mark_closed()
        if self.raw is not None:
            self.raw.close()   # sends what is queued (a TLS alert) first

    cdef void mark_closed(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = L_CLOSED

    def handshake_timeout(self):
        self.timer = None
        if self.state == L_HANDSHAKE:
            self.fail(TimeoutError("the TLS handshake took too long"))

    cdef void free(self):
        if self.ssl is not NULL:
            SSL_free(self.ssl)
            self.ssl = NULL

