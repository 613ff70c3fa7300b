"""HPACK (fastproxy/_core/hpack.pyx) against the `hpack` package and RFC 7541.

The oracle works both ways, over random header lists and over sequences of blocks that
share a dynamic table: what our Encoder writes, `hpack` decodes to the same list; what
`hpack` writes (with and without Huffman coding), our Decoder reads back. The RFC's own
examples (Appendix C) pin the exact bytes, and a table of malformed blocks pins the
refusals (a COMPRESSION_ERROR in HTTP/2).
"""
from __future__ import annotations

import os

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._core.hpack import Decoder, Encoder, HPACKBomb, HPACKError

SCALE = int(os.environ.get("FASTPROXY_FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))

# names from the static table, and others; values of every byte but CR, LF and NUL
names = st.sampled_from([b":method", b":path", b":authority", b":scheme", b":status", b"accept",
                         b"content-type", b"user-agent", b"cookie", b"authorization",
                         b"x-request-id", b"grpc-status", b"te"]) | \
    st.binary(min_size=1, max_size=20).map(lambda b: bytes(c | 0x20 for c in b if c > 32) or b"x")
values = st.sampled_from([b"", b"GET", b"/", b"200", b"http", b"gzip, deflate", b"trailers"]) | \
    st.binary(max_size=80).map(lambda b: bytes(c for c in b if c not in (0, 10, 13)))
header_lists = st.lists(st.tuples(names, values), max_size=20)


@FUZZ
@given(st.lists(header_lists, min_size=1, max_size=6))
def test_our_blocks_decode_with_hpack(blocks):
    ours, theirs = Encoder(), hpack.Decoder()
    for headers in blocks:
        assert theirs.decode(ours.encode(headers), raw=True) == headers


@FUZZ
@given(st.lists(header_lists, min_size=1, max_size=6), st.booleans())
def test_hpack_blocks_decode_with_ours(blocks, huffman):
    theirs, ours = hpack.Encoder(), Decoder()
    for headers in blocks:
        assert ours.decode(theirs.encode(headers, huffman=huffman)) == headers


@FUZZ
@given(st.lists(header_lists, min_size=1, max_size=6), st.sampled_from([0, 64, 256, 4096]))
def test_a_smaller_table_is_announced_and_respected(blocks, size):
    ours, theirs = Encoder(), hpack.Decoder()
    ours.set_max_table_size(size)
    theirs.max_allowed_table_size = size
    for headers in blocks:
        assert theirs.decode(ours.encode(headers), raw=True) == headers
        assert theirs.header_table_size <= size


@FUZZ
@given(st.binary(max_size=64))
def test_whatever_we_accept_hpack_decodes_alike(block):
    try:
        ours = Decoder().decode(block)
    except HPACKError:
        return
    assert hpack.Decoder().decode(block, raw=True) == ours


def test_repeated_fields_come_from_the_dynamic_table():
    encoder = Encoder()
    first = encoder.encode([(b"x-custom", b"a rather long value that compresses")])
    second = encoder.encode([(b"x-custom", b"a rather long value that compresses")])
    assert len(second) == 1 and second[0] == 0x80 | 62        # indexed: the newest entry


def test_sensitive_fields_are_never_indexed():
    block = Encoder().encode([(b"authorization", b"Bearer secret")])
    assert block[0] & 0xF0 == 0x10                               # literal never indexed
    decoder = Decoder()
    assert decoder.decode(block) == [(b"authorization", b"Bearer secret")]
    assert decoder.table_size == 0


# RFC 7541 Appendix C.4: requests with Huffman coding, one dynamic table
C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
      (b":authority", b"www.example.com")], 57),
    ("828684be5886a8eb10649cbf",
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
      (b":authority", b"www.example.com"), (b"cache-control", b"no-cache")], 110),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
     [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
      (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")], 164),
]


def test_rfc7541_appendix_c4_requests_with_huffman():
    decoder = Decoder()
    for hex_block, headers, table_size in C4:
        assert decoder.decode(bytes.fromhex(hex_block)) == headers
        assert decoder.table_size == table_size


def test_rfc7541_appendix_c4_is_what_we_encode():
    encoder = Encoder()
    for hex_block, headers, _ in C4:
        assert encoder.encode(headers).hex() == hex_block


MALFORMED = {
    "index 0": b"\x80",
    "index beyond the table": b"\xbf",                     # 63 with an empty dynamic table
    "truncated integer": b"\xff",
    "integer above 2^32": b"\xff\xff\xff\xff\xff\xff\x7f",
    "truncated string": b"\x40\x85ab",
    "string missing": b"\x40",
    "huffman padding of zeros": b"\x40\x81\x00\x00",
    "huffman padding longer than 7 bits": b"\x00\x01a\x82\xff\xff",
    "huffman EOS": b"\x00\x01a\x84\xff\xff\xff\xff",
    "size update above the announced": b"\x3f\xe2\x1f",   # 4097
    "size update after a field": b"\x82\x20",
}


@pytest.mark.parametrize("block", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_blocks_are_refused(block):
    with pytest.raises(HPACKError):
        Decoder().decode(block)


def test_a_header_list_over_a_limit_is_cut_but_still_decoded_to_keep_the_table_in_step():
    encoder, decoder = Encoder(), Decoder()
    decoder.max_list_size = 100
    fields = [(b"x-a", b"v" * 40), (b"x-b", b"w" * 40), (b"x-c", b"1")]
    assert decoder.decode(encoder.encode(fields)) == fields[:1] and decoder.oversized
    # the entries added after the cut are in the table: the next block refers to them
    decoder.max_list_size = 65536
    assert decoder.decode(encoder.encode(fields)) == fields and not decoder.oversized
    decoder.max_fields = 2
    assert decoder.decode(encoder.encode(fields)) == fields[:2] and decoder.oversized


def test_a_block_decoding_past_four_times_a_limit_is_a_bomb_and_decoding_stops():
    """A 1,000-byte entry and references to it: up to 4 x max_list_size the list is only
    cut (431 material); past it the decoder gives up (the connection ends)."""
    decoder = Decoder()
    decoder.max_list_size = 10_000
    entry = hpack.Encoder().encode([(b"x-bomb", b"a" * 1000)])  # into the table: 1,038 bytes
    assert len(decoder.decode(entry + b"\xbe" * 30)) < 31 and decoder.oversized   # 32 KB: cut
    with pytest.raises(HPACKBomb):
        decoder.decode(b"\xbe" * 40)                              # 41 KB: a bomb
    decoder = Decoder()
    decoder.max_fields = 10
    with pytest.raises(HPACKBomb):
        decoder.decode(b"\x82" * 41)                              # 41 fields, 4 x 10 allowed
