"""The chunked-body reader (ChunkedReader in fastproxy/_core/http1.pyx) against h11.

The reader validates a chunked body as it streams past; the bytes it says it consumed
are forwarded upstream as they are, so anything it lets through must be framing every
recipient reads the same way. hypothesis builds bodies from the RFC 9112 §7.1 grammar;
h11 decodes the same bytes (whole, byte by byte, at random splits) and must agree.
Mutated bodies check that whatever h11 refuses we refuse too, and that what we refuse
and h11 accepts is one of our documented stricter cases (`STRICTER`).
"""

from __future__ import annotations

import os
import re

import h11
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fastproxy._core.http1 import ChunkedReader, ParseError

SCALE = int(os.environ.get("FASTPROXY_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=100 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
# Shrinking a mutated input can take longer than the whole file may; deep runs shrink.
FUZZ_MUTATIONS = settings(max_examples=250 * SCALE, deadline=None,
                          suppress_health_check=list(HealthCheck),
                          phases=list(Phase) if SCALE > 1 else
                          [Phase.explicit, Phase.reuse, Phase.generate])

HEAD = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
MAX_LINE = 8192  # http1.pyx: the longest chunk-size/extension line we read


def read(data: bytes, pieces: list[bytes] | None = None):
    """Our reader over `pieces` (default: all at once): (consumed, data, done) or raises."""
    reader, consumed, out = ChunkedReader(), 0, []
    for piece in pieces if pieces is not None else [data]:
        used, chunks = reader.feed_bytes(piece, extract=True)
        consumed += used
        out += chunks
        if reader.done:
            break
        assert used == len(piece), "a reader that is not done consumes all it is given"
    return consumed, b"".join(out), reader.done


def ours(data: bytes):
    try:
        return read(data)
    except ParseError as exc:
        assert exc.status == 400
        return ("refused", exc.detail)


def h11_read(body: bytes, pieces: list[bytes] | None = None):
    """h11 decoding `body` after a chunked request head: (consumed, data, trailers),
    None while incomplete, or ('refused', why)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(HEAD)
    assert isinstance(conn.next_event(), h11.Request)
    data, fed = b"", 0
    try:
        for piece in pieces if pieces is not None else [body]:
            conn.receive_data(piece)
            fed += len(piece)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    break
                if isinstance(event, h11.Data):
                    data += event.data
                elif isinstance(event, h11.EndOfMessage):
                    left = len(conn.trailing_data[0])
                    return fed - left, data, list(event.headers.raw_items())
    except h11.RemoteProtocolError as exc:
        return ("refused", str(exc))
    return None


def split_at(data: bytes, cuts) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# -- the chunked grammar as strategies (RFC 9112 §7.1) ----------------------------------

ALPHA = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TCHAR = ALPHA + "0123456789!#$%&'*+-.^_`|~"
QDTEXT = "\t !" + "".join(chr(c) for c in range(0x23, 0x7F) if c != 0x5C) + \
    "".join(chr(c) for c in range(0x80, 0x100))
FIELD_VCHAR = "".join(chr(c) for c in range(0x21, 0x7F)) + \
    "".join(chr(c) for c in range(0x80, 0x100))


def chars(alphabet: str, min_size=0, max_size=10):
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size).map(
        lambda s: s.encode("latin-1"))


tokens = chars(TCHAR, 1, 10)
quoted = chars(QDTEXT, 0, 8).map(lambda s: b'"' + s + b'"')
bws = st.sampled_from([b"", b"", b" ", b"\t", b" \t "])
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ); h11 refuses
# BWS before the first ";" (RFC allows it), so the h11 oracle gets extensions without it.
extension = st.tuples(bws, tokens, st.one_of(st.none(), st.tuples(bws, bws, st.one_of(
    tokens, quoted)))).map(lambda e: b";" + e[0] + e[1] + (
        b"" if e[2] is None else e[2][0] + b"=" + e[2][1] + e[2][2]))
extensions = st.lists(st.tuples(extension, bws), max_size=3).map(
    lambda exts: b"".join(ext if i == 0 else pre + ext for i, (ext, pre) in enumerate(exts)))
trailer_values = st.lists(chars(FIELD_VCHAR, 1, 8), max_size=3).map(b" ".join)
trailers = st.lists(st.tuples(tokens, trailer_values), max_size=3)


@st.composite
def chunked_bodies(draw):
    """(wire bytes, decoded data, trailers as (name, value))."""
    chunks = draw(st.lists(st.one_of(st.binary(min_size=1, max_size=40),
                                     st.binary(min_size=200, max_size=600)), max_size=5))
    wire = bytearray()
    for chunk in chunks:
        size = b"%x" % len(chunk)
        size = draw(st.sampled_from([size, size.upper(), b"0" + size, b"000" + size]))
        wire += size + draw(extensions) + b"\r\n" + chunk + b"\r\n"
    wire += draw(st.sampled_from([b"0", b"00"])) + draw(extensions) + b"\r\n"
    fields = draw(trailers)
    for name, value in fields:
        wire += name + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + value + b"\r\n"
    wire += b"\r\n"
    return bytes(wire), b"".join(chunks), fields


# -- valid bodies --------------------------------------------------------------------------

@FUZZ
@given(chunked_bodies())
def test_valid_bodies_agree_with_h11(body):
    wire, data, fields = body
    consumed, got, done = read(wire + NEXT)
    assert done and consumed == len(wire) and got == data
    oracle = h11_read(wire + NEXT)
    assert oracle is not None and oracle[0] != "refused", oracle
    assert oracle[:2] == (len(wire), data)
    assert oracle[2] == fields


@FUZZ
@given(chunked_bodies(), st.lists(st.integers(0, 2000), max_size=12))
def test_split_feeding_reads_the_same_body(body, cuts):
    wire, data, _ = body
    pieces = split_at(wire + NEXT, cuts)
    assert read(wire + NEXT, pieces) == (len(wire), data, True)
    assert h11_read(wire + NEXT, pieces)[:2] == (len(wire), data)


@FUZZ
@given(chunked_bodies())
def test_byte_by_byte_feeding_reads_the_same_body(body):
    wire, data, _ = body
    assert read(wire + NEXT, bytewise(wire + NEXT)) == (len(wire), data, True)


@FUZZ
@given(chunked_bodies(), st.data())
def test_every_proper_prefix_is_incomplete(body, draw):
    wire, data, _ = body
    cut = draw.draw(st.integers(0, len(wire) - 1))
    consumed, got, done = read(wire[:cut])
    assert not done and consumed == cut
    assert data.startswith(got)


def test_without_extract_no_data_is_kept():
    reader = ChunkedReader()
    assert reader.feed_bytes(b"3\r\nabc\r\n0\r\n\r\n") == (13, None)
    assert reader.done


ACCEPTED = [
    ("extensions", b"5;a=b;c=\"x y\"\r\nhello\r\n0;last\r\n\r\n", b"hello"),
    ("extension-name-only", b"5;a\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("extension-token-value", b"5;a=b\r\nhello\r\n0\r\n\r\n", b"hello"),
    ("extension-bws-everywhere", b'5 ; a = "q" ;\tb\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("extension-quoted-escapes", b'5;a="x\\"y\\\\";b=""\r\nhello\r\n0\r\n\r\n', b"hello"),
    ("extension-quoted-obs-text", b'5;a="\xe9 ;=\t"\r\nhello\r\n0\r\n\r\n', b"hello"),
    # RFC 9112 §7.1.1: BWS is allowed before ";" (h11 refuses it; we follow the RFC)
    ("bws-before-extension", b"5 ;a=b\r\nhello\r\n0\t;x\r\n\r\n", b"hello"),
    ("uppercase-hex", b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    ("leading-zeros", b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
    ("trailers", b"5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Other:\tv w\r\n\r\n", b"hello"),
    ("empty-trailer-value", b"0\r\nX-Empty:\r\n\r\n", b""),
    ("crlf-in-data", b"4\r\n\r\n\r\n\r\n0\r\n\r\n", b"\r\n\r\n"),
    ("empty-body", b"0\r\n\r\n", b""),
]


@pytest.mark.parametrize("wire,data", [a[1:] for a in ACCEPTED], ids=[a[0] for a in ACCEPTED])
def test_accepted(wire, data):
    assert read(wire + NEXT) == (len(wire), data, True)
    assert read(wire + NEXT, bytewise(wire + NEXT)) == (len(wire), data, True)


def test_largest_chunk_sizes():
    # sizes up to 2**60 - 1 are read; beyond is "chunk size overflow"
    for line in (b"fffffffffffffff", b"FFFFFFFFFFFFFFF", b"000fffffffffffffff",
                 b"1000000000000000"):
        consumed, _, done = read(line + b"\r\n" + b"x" * 10)
        assert consumed == len(line) + 12 and not done


# -- invalid bodies -------------------------------------------------------------------------

REFUSED = [
    ("size-0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("size-leading-space", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("size-trailing-space", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("size-trailing-tab", b"5\t\r\nhello\r\n0\r\n\r\n"),
    ("size-inner-space", b"5 5\r\nhello\r\n0\r\n\r\n"),
    ("size-plus", b"+5\r\nhello\r\n0\r\n\r\n"),
    ("size-minus", b"-5\r\nhello\r\n0\r\n\r\n"),
    ("size-underscore", b"5_0\r\nhello\r\n0\r\n\r\n"),
    ("size-non-hex", b"g\r\nhello\r\n0\r\n\r\n"),
    ("size-empty", b"\r\nhello\r\n0\r\n\r\n"),
    ("size-missing-before-ext", b";a\r\nhello\r\n0\r\n\r\n"),
    ("size-overflow-16-digits", b"ffffffffffffffff\r\n"),
    ("size-overflow-2**60", b"10000000000000000\r\n"),
    ("size-overflow-40-digits", b"1" + b"0" * 39 + b"\r\n"),
    ("size-bare-lf", b"5\nhello\r\n0\r\n\r\n"),
    ("size-bare-cr", b"5\rhello\r\n0\r\n\r\n"),
    ("size-nul", b"5\x00\r\nhello\r\n0\r\n\r\n"),
    # chunk-ext-name is a token and chunk-ext-val a token or quoted-string (RFC 9112
    # §7.1.1); BUG at the time of writing: anything after ";" but CTLs was read
    ("ext-empty", b"5;\r\nhello\r\n0\r\n\r\n"),
    ("ext-empty-name", b"5;=x\r\nhello\r\n0\r\n\r\n"),
    ("ext-empty-value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
    ("ext-empty-between", b"5;a;;b\r\nhello\r\n0\r\n\r\n"),
    ("ext-empty-last", b"5;a;\r\nhello\r\n0\r\n\r\n"),
    ("ext-space-in-name", b"5;a b\r\nhello\r\n0\r\n\r\n"),
    ("ext-space-in-value", b"5;a=b c\r\nhello\r\n0\r\n\r\n"),
    ("ext-non-token-name", b"5;a@b\r\nhello\r\n0\r\n\r\n"),
    ("ext-non-token-value", b"5;a=b/c\r\nhello\r\n0\r\n\r\n"),
    ("ext-two-values", b"5;a=b=c\r\nhello\r\n0\r\n\r\n"),
    ("ext-trailing-bws", b"5;a \r\nhello\r\n0\r\n\r\n"),
    ("ext-quote-in-token", b'5;a=b"c"\r\nhello\r\n0\r\n\r\n'),
    ("ext-after-quoted", b'5;a="b"c\r\nhello\r\n0\r\n\r\n'),
    ("ext-unterminated-quote", b'5;a="b\r\nhello\r\n0\r\n\r\n'),
    ("ext-quoted-nul", b'5;a="b\x00"\r\nhello\r\n0\r\n\r\n'),
    ("ext-escaped-ctl", b'5;a="\\\x01"\r\nhello\r\n0\r\n\r\n'),
    ("ext-obs-text-name", b"5;\xe9\r\nhello\r\n0\r\n\r\n"),
    ("ext-nul", b"5;a\x00\r\nhello\r\n0\r\n\r\n"),
    ("ext-del", b"5;a\x7f\r\nhello\r\n0\r\n\r\n"),
    ("ext-bare-lf", b"5;a\nhello\r\n0\r\n\r\n"),
    ("ext-bare-cr", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
    ("ext-too-long", b"5;" + b"a" * (MAX_LINE + 1) + b"\r\nhello\r\n0\r\n\r\n"),
    ("data-missing-crlf", b"5\r\nhello0\r\n\r\n"),
    ("data-longer-than-size", b"5\r\nhelloworld\r\n0\r\n\r\n"),
    ("data-shorter-than-size", b"5\r\nhey\r\n0\r\n\r\n"),
    ("data-bare-lf-after", b"5\r\nhello\n0\r\n\r\n"),
    ("data-bare-cr-after", b"5\r\nhello\r0\r\n\r\n"),
    ("last-chunk-bare-lf", b"0\n\r\n"),
    ("end-bare-lf", b"0\r\n\n"),
    ("end-cr-cr", b"0\r\n\r\r"),
    ("end-space-line", b"0\r\n \r\n\r\n"),
    ("trailer-obs-fold", b"0\r\nX: a\r\n b\r\n\r\n"),
    ("trailer-bare-lf", b"0\r\nX: a\n\r\n"),
    ("trailer-bare-cr", b"0\r\nX: a\rb\r\n\r\n"),
    ("trailer-nul", b"0\r\nX: a\x00\r\n\r\n"),
    ("trailer-ctl", b"0\r\nX: a\x01\r\n\r\n"),
    ("trailer-empty-name", b"0\r\n: a\r\n\r\n"),
    # field-line = field-name ":" OWS field-value OWS (RFC 9112 §5): the same rules as
    # head fields. BUG at the time of writing: after a first tchar the reader only
    # refuses CTLs, so the next four pass and are forwarded upstream.
    ("trailer-no-colon", b"0\r\nfoo\r\n\r\n"),
    ("trailer-space-before-colon", b"0\r\nX : y\r\n\r\n"),
    ("trailer-space-in-name", b"0\r\nX Y: z\r\n\r\n"),
    ("trailer-non-token-name", b"0\r\nX\x80Y: z\r\n\r\n"),
    # MAX_LINE bounds "chunk-size and chunk-extension lines" (http1.pyx); BUG at the time
    # of writing: size digits are not counted, so endless leading zeros are read (and
    # forwarded) without limit. h11 stops at 20 hex digits.
    ("size-line-too-long", b"0" * (MAX_LINE + 1) + b"5\r\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("wire", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused(wire):
    with pytest.raises(ParseError) as info:
        read(wire + NEXT)
    assert info.value.status == 400
    with pytest.raises(ParseError):
        read(wire + NEXT, bytewise(wire + NEXT))


def test_feed_bytes_takes_bytearray_or_refuses_it():
    # feed_bytes reads its argument with PyBytes_AS_STRING unchecked; BUG at the time of
    # writing: a bytearray is read as garbage (here: "invalid chunk size"), an
    # out-of-bounds read instead of a TypeError.
    wire = bytearray(b"5\r\nhello\r\n0\r\n\r\n")
    try:
        used, out = ChunkedReader().feed_bytes(wire, extract=True)
    except TypeError:
        return
    assert (used, b"".join(out)) == (len(wire), b"hello")


# -- mutated bodies against h11 --------------------------------------------------------------

def _lines(wire: bytes):
    """The framing lines of a body h11 accepted, in h11's reading: (size lines, trailer)."""
    sizes, i = [], 0
    while True:
        end = wire.index(b"\r\n", i)
        line = wire[i:end]
        sizes.append(line)
        size = int(re.match(rb"[0-9A-Fa-f]+", line).group(), 16)
        i = end + 2
        if size == 0:
            return sizes, wire[i:]
        i += size + 2


def _size_line_has(pattern: bytes):
    return lambda wire: any(re.search(pattern, line) for line in _lines(wire)[0])


_TOKEN = rb"[" + re.escape(TCHAR.encode()) + rb"]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_EXT = re.compile(rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN +
                       rb"|" + _QUOTED + rb"))?)*")

STRICTER = {
    # module docstring: whitespace in a chunk size other than before an extension
    # (h11 takes OWS before the CRLF)
    "whitespace in chunk size": _size_line_has(rb"^[0-9A-Fa-f]+[ \t]+$"),
    # chunk-ext is tokens and quoted-strings (h11 takes anything after ";")
    "invalid chunk extension": lambda wire: any(
        not CHUNK_EXT.fullmatch(re.sub(rb"^[0-9A-Fa-f]+", b"", line))
        for line in _lines(wire)[0]),
    # a CR in a chunk line must end it (h11's `;.*` swallows a bare CR in an extension)
    "missing LF after chunk size": _size_line_has(rb"\r"),
    # sizes are capped below 2**60 (h11 reads up to 20 hex digits)
    "chunk size overflow": lambda wire: any(
        int(re.match(rb"[0-9A-Fa-f]+", line).group(), 16) >= 1 << 60
        for line in _lines(wire)[0]),
    # SPEC §3: obs-fold and bare LF are refused in trailers as in heads (h11 takes both)
    "invalid trailer field": lambda wire: re.match(rb"(?:.*\r?\n)*?[ \t\n]",
                                                   _lines(wire)[1]) is not None,
    "control character in trailer":
        lambda wire: re.search(rb"[\x00-\x08\x0a-\x1f\x7f]",
                               re.sub(rb"\r\n", b"", _lines(wire)[1])) is not None,
}


@st.composite
def mutated(draw):
    wire = bytearray(draw(chunked_bodies())[0])
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        i = draw(st.integers(0, len(wire) - 1))
        byte = draw(st.one_of(st.sampled_from(b"\x00\t\n\r ;:=\"0aF\x7f\x80xX-+"),
                              st.integers(0, 255)))
        if op == "replace":
            wire[i] = byte
        elif op == "insert":
            wire.insert(i, byte)
        elif len(wire) > 1:
            del wire[i]
    return bytes(wire)


@FUZZ_MUTATIONS
@given(mutated())
def test_mutated_bodies_refused_whenever_h11_refuses(wire):
    mine, oracle = ours(wire + NEXT), h11_read(wire + NEXT)
    refused = mine[0] == "refused"
    if oracle is not None and oracle[0] == "refused":
        if not refused and re.search(rb"(?m)^[0-9A-Fa-f]+[ \t]+;", wire):
            return  # RFC 9112 §7.1.1 BWS before ";": h11 refuses, the RFC allows it
        assert refused, f"h11 refused ({oracle[1]}) but we read {mine}"
    elif oracle is None:
        assert refused or not mine[2], "we ended a body h11 still reads"
    elif refused:
        assert mine[1] in STRICTER, f"refused for an undocumented reason: {mine[1]}"
        assert STRICTER[mine[1]](wire + NEXT), f"{mine[1]!r} does not apply"
    else:
        assert mine[2], "h11 ended the body, we did not"
        assert mine[:2] == oracle[:2]


def test_trailers_are_kept_when_the_data_is_extracted():
    reader = ChunkedReader()
    body = b"5\r\nhello\r\n0\r\nX-A: 1\r\nx-b:  two \r\n\r\n"
    used, pieces = reader.feed_bytes(body, True)
    assert used == len(body) and b"".join(pieces) == b"hello" and reader.done
    assert reader.trailers() == [(b"x-a", b"1"), (b"x-b", b"two")]
    passing = ChunkedReader()          # only validated, not extracted: nothing kept
    passing.feed_bytes(body)
    assert passing.trailers() == []
