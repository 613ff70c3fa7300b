"""HPACK (RFC 7541): HTTP/2's header compression, sans-IO, for the core's HTTP/2 codec.

Owns the integer and string (Huffman) codings, the static and dynamic tables and the
decoder's limits. A `Decoder` and an `Encoder` belong to one direction of one HTTP/2
connection and keep its dynamic table between header blocks. Errors raise `HPACKError`,
which the connection turns into a COMPRESSION_ERROR.

The `hpack` package is the oracle in tests/unit/core/test_hpack.py (both directions,
random header lists and the RFC's examples), never used here: it costs tens of
microseconds per header block, this a few hundred nanoseconds.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int16_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

include "hpack_tables.pxi"

DEFAULT_TABLE_SIZE = 4096
cdef Py_ssize_t ENTRY_OVERHEAD = 32    # RFC 7541 §4.1: each entry's size is name + value + 32


# A list decoded past this many times a limit is no oversized request but a bomb (a few
# bytes referring to one large table entry again and again): decoding stops there.
cdef Py_ssize_t BOMB_FACTOR = 4


class HPACKBomb(ValueError):
    """A header block that decodes to more than BOMB_FACTOR times the limits."""


class HPACKError(ValueError):
    """A header block that breaks RFC 7541 (an HTTP/2 COMPRESSION_ERROR)."""


# -- Huffman ------------------------------------------------------------------------------
# Decoding walks a binary tree built once from the code table: node 0 is the root, a child
# >= 0 is another node, a child < 0 is the leaf of symbol -child - 1.
cdef int16_t TREE[256][2]


cdef void _build_tree() noexcept:
    cdef int nodes = 1, sym, bit, node, i
    cdef uint32_t code
    for i in range(256):
        TREE[i][0] = TREE[i][1] = 0
    for sym in range(257):
        code = HUFFMAN_CODES[sym]
        node = 0
        for i in range(HUFFMAN_BITS[sym] - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                TREE[node][bit] = -sym - 1
            else:
                if TREE[node][bit] == 0:
                    TREE[node][bit] = nodes
                    nodes += 1
                node = TREE[node][bit]


_build_tree()


cdef bytes _huffman_decode(const uint8_t* p, Py_ssize_t n):
    # at most 8/5 symbols per byte: the shortest code has 5 bits
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n * 8 // 5 + 1)
    cdef char* o = PyBytes_AS_STRING(out)
    cdef Py_ssize_t k = 0, i
    cdef int node = 0, depth = 0, bit, child, b
    cdef bint ones = True      # the bits since the last symbol are all ones (EOS padding)
    for i in range(n):
        b = p[i]
        for bit in range(7, -1, -1):
            child = TREE[node][(b >> bit) & 1]
            if child < 0:
                if child == -257:
                    raise HPACKError("EOS symbol in a Huffman-coded string")
                o[k] = <char>(-child - 1)
                k += 1
                node = depth = 0
                ones = True
            else:
                node = child
                depth += 1
                ones = ones and (b >> bit) & 1
    if depth > 7 or not ones:
        raise HPACKError("Huffman-coded string with padding that is not a prefix of EOS")
    return out[:k]


cdef Py_ssize_t _huffman_length(const uint8_t* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t bits = 0, i
    for i in range(n):
        bits += HUFFMAN_BITS[p[i]]
    return (bits + 7) >> 3


cdef Py_ssize_t _huffman_encode(const uint8_t* p, Py_ssize_t n, uint8_t* o) noexcept:
    cdef uint64_t acc = 0
    cdef int bits = 0, length
    cdef Py_ssize_t i, k = 0
    for i in range(n):
        length = HUFFMAN_BITS[p[i]]
        acc = (acc << length) | HUFFMAN_CODES[p[i]]
        bits += length
        while bits >= 8:
            bits -= 8
            o[k] = <uint8_t>(acc >> bits)
            k += 1
    if bits:
        o[k] = <uint8_t>((acc << (8 - bits)) | (0xFF >> bits))   # pad with EOS's first bits
        k += 1
    return k


# -- the dynamic table ----------------------------------------------------------------------
cdef class _Table:
    """The dynamic table, newest entry first (index 62 is the newest)."""

    def __cinit__(self):
        self.entries = []
        self.max_size = DEFAULT_TABLE_SIZE

    cdef void add(self, bytes name, bytes value):
        cdef Py_ssize_t size = PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + ENTRY_OVERHEAD
        self.inserted += 1
        if size > self.max_size:   # §4.4: an entry larger than the table empties it
            self.entries.clear()
            self.size = 0
            return
        self.entries.insert(0, (name, value))
        self.size += size
        self.evict()

    cdef void resize(self, Py_ssize_t max_size):
        self.max_size = max_size
        self.evict()

    cdef void evict(self):
        cdef tuple old
        while self.size > self.max_size:
            old = self.entries.pop()
            self.size -= PyBytes_GET_SIZE(old[0]) + PyBytes_GET_SIZE(old[1]) + ENTRY_OVERHEAD

    cdef tuple get(self, uint64_t index):
        """Entry `index` of the address space: 1..61 static, then dynamic."""
        if index == 0:
            raise HPACKError("header field index 0")
        if index <= 61:
            return STATIC_TABLE[index - 1]
        if index - 62 < <uint64_t>len(self.entries):
            return self.entries[index - 62]
        raise HPACKError(f"header field index {index} beyond the table ({61 + len(self.entries)})")


# -- decoding -------------------------------------------------------------------------------
cdef class Decoder:
    """Decodes the header blocks one peer sends on one connection."""

    def __cinit__(self):
        self.table = _Table()
        self.max_table_size = DEFAULT_TABLE_SIZE
        self.max_list_size = 65536
        self.max_fields = 1000

    @property
    def table_size(self):
        return self.table.size

    def decode(self, bytes block):
        """The header list of one complete header block, as [(name, value)]."""
        return self.decode_block(block)

    cdef list decode_block(self, bytes block):
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(block)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(block), i = 0, total = 0, count = 0
        cdef list out = []
        cdef uint64_t index
        cdef int b
        cdef bint fields = False
        cdef bytes name, value
        cdef tuple entry
        self.oversized = False
        while i < n:
            b = p[i]
            if b & 0x80:                              # indexed field
                i = _int(p, i, n, 7, &index)
                entry = self.table.get(index)
                name, value = entry
            elif b & 0xE0 == 0x20:                    # dynamic table size update
                if fields:
                    raise HPACKError("dynamic table size update after a header field")
                i = _int(p, i, n, 5, &index)
                if index > <uint64_t>self.max_table_size:
                    raise HPACKError(f"dynamic table size update to {index}, above the "
                                     f"{self.max_table_size} announced")
                self.table.resize(<Py_ssize_t>index)
                continue
            else:                                     # a literal
                i = _int(p, i, n, 6 if b & 0x40 else 4, &index)
                if index:
                    name = self.table.get(index)[0]
                else:
                    name = _string(p, &i, n)
                value = _string(p, &i, n)
                if b & 0x40:
                    self.table.add(name, value)
            fields = True
            count += 1
            total += PyBytes_GET_SIZE(name) + PyBytes_GET_SIZE(value) + ENTRY_OVERHEAD
            if total > self.max_list_size or count > self.max_fields:
                if total > BOMB_FACTOR * self.max_list_size or count > BOMB_FACTOR * self.max_fields:
                    raise HPACKBomb(f"a header block decoding to more than {BOMB_FACTOR} times "
                                    f"the limits ({self.max_list_size} bytes, {self.max_fields} fields)")
                # the block is still decoded to its end, so that the dynamic table stays
                # in step with the encoder's (RFC 7541 §2.3), but no field beyond is kept
                self.oversized = True
                continue
            out.append((name, value))
        return out


cdef Py_ssize_t _int(const uint8_t* p, Py_ssize_t i, Py_ssize_t n, int prefix,
                     uint64_t* value) except -1:
    """An integer with an N-bit prefix (§5.1) at p[i]; the offset after it."""
    cdef uint64_t mask = (1 << prefix) - 1, v = p[i] & mask
    cdef int shift = 0
    i += 1
    if v < mask:
        value[0] = v
        return i
    while True:
        if i >= n:
            raise HPACKError("truncated integer")
        if shift > 28:
            raise HPACKError("integer larger than 2^32")
        v += <uint64_t>(p[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not p[i - 1] & 0x80:
            break
    if v > 0xFFFFFFFF:
        raise HPACKError("integer larger than 2^32")
    value[0] = v
    return i


cdef bytes _string(const uint8_t* p, Py_ssize_t* pos, Py_ssize_t n):
    """The string literal (§5.2) at p[pos]; pos moves past it."""
    cdef uint64_t length
    cdef bint huffman
    cdef Py_ssize_t i = pos[0]
    if i >= n:
        raise HPACKError("truncated header block: a string is missing")
    huffman = p[i] & 0x80
    i = _int(p, i, n, 7, &length)
    if length > <uint64_t>(n - i):
        raise HPACKError("truncated string")
    pos[0] = i + <Py_ssize_t>length
    if huffman:
        return _huffman_decode(p + i, <Py_ssize_t>length)
    return PyBytes_FromStringAndSize(<const char*>p + i, <Py_ssize_t>length)


# -- encoding -------------------------------------------------------------------------------
cdef dict STATIC_FIELDS = {}     # (name, value) -> index
cdef dict STATIC_NAMES = {}      # name -> first index
for _i, (_name, _value) in enumerate(STATIC_TABLE, 1):
    STATIC_FIELDS.setdefault((_name, _value), _i)
    STATIC_NAMES.setdefault(_name, _i)

# fields never put in a table, and marked never-indexed for the next hop (§7.1.3)
cdef frozenset SENSITIVE = frozenset((b"authorization", b"proxy-authorization", b"cookie",
                                      b"set-cookie"))
# values that differ from message to message: indexing them would only evict useful entries
cdef frozenset UNIQUE = frozenset((b":path", b"content-length", b"x-request-id", b"traceparent",
                                   b"tracestate", b"x-b3-traceid", b"x-b3-spanid",
                                   b"x-b3-parentspanid", b"b3", b"etag", b"last-modified",
                                   b"age", b"location", b"grpc-message"))


cdef class Encoder:
    """Encodes the header blocks we send on one connection: static and dynamic table
    matches, literals Huffman-coded when that is shorter."""

    def __cinit__(self):
        self.table = _Table()
        self.fields = {}
        self.names = {}
        self.pending_size = -1
        self.out = bytearray()

    def set_max_table_size(self, Py_ssize_t size):
        """The peer's SETTINGS_HEADER_TABLE_SIZE: we use at most that, and say so."""
        if size != self.table.max_size:
            self.pending_size = size
        self.table.resize(size)
        self.forget_evicted()

    def encode(self, headers):
        """One header block for [(name, value)] (names lowercase, as HTTP/2 requires)."""
        return self.encode_list(list(headers))

    cdef bytes encode_list(self, list headers):
        cdef bytearray out = self.out
        cdef bytes name, value
        del out[:]
        if self.pending_size >= 0:
            _put_int(out, 0x20, 5, self.pending_size)
            self.pending_size = -1
        for name, value in headers:
            self.field(out, name, value)
        return bytes(out)

    cdef void field(self, bytearray out, bytes name, bytes value):
        cdef object index = STATIC_FIELDS.get((name, value))
        cdef object dynamic
        cdef bint sensitive, indexing
        if index is not None:
            _put_int(out, 0x80, 7, <uint64_t>index)
            return
        cdef uint64_t oldest = self.table.inserted - len(self.table.entries)   # live ids are above
        dynamic = self.fields.get((name, value))
        if dynamic is not None and <uint64_t>dynamic > oldest:
            _put_int(out, 0x80, 7, 62 + self.table.inserted - <uint64_t>dynamic)
            return
        sensitive = name in SENSITIVE
        indexing = not sensitive and name not in UNIQUE and PyBytes_GET_SIZE(name) \
            + PyBytes_GET_SIZE(value) + ENTRY_OVERHEAD <= self.table.max_size // 2
        index = STATIC_NAMES.get(name)
        if index is None:
            dynamic = self.names.get(name)
            if dynamic is not None and <uint64_t>dynamic > oldest:
                index = 62 + self.table.inserted - <uint64_t>dynamic
        if indexing:
            _put_int(out, 0x40, 6, index or 0)
        else:
            _put_int(out, 0x10 if sensitive else 0x00, 4, index or 0)
        if index is None:
            _put_string(out, name)
        _put_string(out, value)
        if indexing:
            self.table.add(name, value)
            self.fields[(name, value)] = self.table.inserted
            self.names[name] = self.table.inserted
            self.forget_evicted()

    cdef void forget_evicted(self):
        """Drop lookups of entries no longer in the table, once there are as many of them
        as live ones (lookups check that an id is still live, so this is only memory)."""
        cdef uint64_t oldest = self.table.inserted - len(self.table.entries)   # ids > oldest live
        if len(self.fields) <= 2 * len(self.table.entries) + 16:
            return
        self.fields = {k: v for k, v in self.fields.items() if v > oldest}
        self.names = {k: v for k, v in self.names.items() if v > oldest}


cdef void _put_int(bytearray out, int first, int prefix, uint64_t value):
    cdef uint64_t mask = (1 << prefix) - 1
    if value < mask:
        out.append(first | <int>value)
        return
    out.append(first | <int>mask)
    value -= mask
    while value >= 0x80:
        out.append(<int>(value & 0x7F) | 0x80)
        value >>= 7
    out.append(<int>value)


cdef void _put_string(bytearray out, bytes s):
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(s)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(s)
    cdef Py_ssize_t h = _huffman_length(p, n), at
    if h < n:
        _put_int(out, 0x80, 7, h)
        at = len(out)
        out.extend(bytes(h))
        _huffman_encode(p, n, <uint8_t*>(<char*>out) + at)
    else:
        _put_int(out, 0x00, 7, n)
        out.extend(s)
