"""The server role of an HTTP/2 connection (fastproxy/_core/http2_session.pxi), with the
`h2` library as the client on the other end.

Bytes go back and forth between an h2 client connection and our ServerSession with no
socket in between: requests, bodies, responses, trailers, flow control both ways, PING,
GOAWAY and the limit on concurrent streams are checked from both ends; hostile frames
(built with hyperframe or by hand) must end in the right error code.
"""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe import frame as hf

from fastproxy._core import http2
from fastproxy._core.http2 import H2Error, RecordingHandler, ServerSession

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/x")]


class Pair:
    """An h2 client and our session, wired back to back."""

    def __init__(self, **session_options):
        self.handler = RecordingHandler()
        self.session = ServerSession(self.handler, **session_options)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()
        self.events = []

    def flush(self):
        """Deliver what each side wrote to the other until both are quiet."""
        for _ in range(20):
            to_server, to_client = self.client.data_to_send(), self.session.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.session.receive(to_server)
            if to_client:
                self.events += self.client.receive_data(to_client)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def handled(self, name):
        return [e for e in self.handler.events if e[0] == name]


def test_the_settings_are_exchanged_and_acknowledged_both_ways():
    pair = Pair(max_concurrent_streams=7, initial_window_size=100000)
    pair.flush()
    changed = pair.of(h2.events.RemoteSettingsChanged)[0].changed_settings
    assert changed[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 7
    assert changed[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE].new_value == 100000
    assert pair.of(h2.events.SettingsAcknowledged)


def test_a_request_with_a_body_and_its_response():
    pair = Pair()
    pair.client.send_headers(1, REQUEST)
    pair.client.send_data(1, b"hello ", end_stream=False)
    pair.client.send_data(1, b"world", end_stream=True)
    pair.flush()
    assert pair.handled("request") == [("request", 1, REQUEST, False)]
    assert [e[2] for e in pair.handled("data")] == [b"hello ", b"world"]
    assert pair.handled("data")[-1][3] is True
    pair.session.send_headers(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
    assert pair.session.send_data(1, b"ok", end_stream=True) == 2
    pair.flush()
    response = pair.of(h2.events.ResponseReceived)[0]
    assert response.headers[0] == (b":status", b"200")
    assert b"".join(e.data for e in pair.of(h2.events.DataReceived)) == b"ok"
    assert pair.of(h2.events.StreamEnded) and pair.session.open_streams == 0


def test_trailers_both_ways():
    pair = Pair()
    pair.client.send_headers(1, REQUEST + [(b"te", b"trailers")])
    pair.client.send_data(1, b"\x00\x00\x00\x00\x00")
    pair.client.send_headers(1, [(b"x-checksum", b"1")], end_stream=True)
    pair.flush()
    assert pair.handled("trailers") == [("trailers", 1, [(b"x-checksum", b"1")])]
    pair.session.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pair.session.send_data(1, b"\x00\x00\x00\x00\x00")
    pair.session.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    pair.flush()
    assert pair.of(h2.events.TrailersReceived)[0].headers == [(b"grpc-status", b"0")]


def test_ping_is_answered():
    pair = Pair()
    pair.flush()
    pair.client.ping(b"12345678")
    pair.flush()
    assert pair.of(h2.events.PingAckReceived)[0].ping_data == b"12345678"


def test_what_we_send_waits_for_the_clients_window():
    pair = Pair()
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.flush()
    pair.session.send_headers(1, [(b":status", b"200")])
    assert pair.session.send_data(1, b"x" * 25, end_stream=True) == 10    # the stream's window
    pair.flush()
    received = pair.of(h2.events.DataReceived)
    pair.client.acknowledge_received_data(received[0].flow_controlled_length, 1)
    pair.flush()
    assert ("window", 1) in pair.handler.events
    assert pair.session.send_window_of(1) == 10
    assert pair.session.send_data(1, b"x" * 15, end_stream=True) == 10
    pair.flush()
    assert sum(len(e.data) for e in pair.of(h2.events.DataReceived)) == 20


def test_the_client_may_send_more_as_the_handler_consumes():
    pair = Pair(initial_window_size=65535)
    pair.client.send_headers(1, REQUEST)
    pair.flush()
    for _ in range(4):
        pair.client.send_data(1, b"y" * 15000)
    pair.flush()
    assert pair.client.local_flow_control_window(1) < 10000        # the client must wait
    pair.session.consumed(1, 60000)
    pair.flush()
    assert pair.client.local_flow_control_window(1) == 65535
    assert pair.client.outbound_flow_control_window >= 60000 - 32768


def test_beyond_max_concurrent_streams_a_stream_is_refused():
    pair = Pair(max_concurrent_streams=1)
    pair.client.send_headers(1, REQUEST)      # before the client has our SETTINGS
    pair.client.send_headers(3, REQUEST)
    pair.flush()
    assert [e[1] for e in pair.handled("request")] == [1]
    reset = pair.of(h2.events.StreamReset)[0]
    assert (reset.stream_id, reset.error_code) == (3, http2.REFUSED_STREAM)


def test_a_client_reset_and_goaway_reach_the_handler():
    pair = Pair()
    pair.client.send_headers(1, REQUEST)
    pair.flush()
    pair.client.reset_stream(1, error_code=8)
    pair.client.close_connection(error_code=0, last_stream_id=0)
    pair.flush()
    assert ("reset", 1, 8) in pair.handler.events
    assert ("goaway", 0, 0) in pair.handler.events


def test_our_goaway_names_the_last_stream_and_new_streams_are_ignored():
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.flush()
    pair.session.goaway()
    pair.flush()
    terminated = pair.of(h2.events.ConnectionTerminated)[0]
    assert (terminated.last_stream_id, terminated.error_code) == (1, 0)


PREFACE = http2.PREFACE
SETTINGS = http2.settings_frame()


def _refusal(wire):
    session = ServerSession(RecordingHandler())
    with pytest.raises(H2Error) as refused:
        session.receive(wire)
    goaway = session.data_to_send()[-17:]
    assert goaway[3] == http2.GOAWAY
    assert int.from_bytes(goaway[-4:], "big") == refused.value.code
    return refused.value.code


HOSTILE = {
    "not the preface": (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + b"x" * 10, http2.PROTOCOL_ERROR),
    "first frame not SETTINGS": (PREFACE + http2.frame(http2.PING, 0, 0, b"x" * 8), http2.PROTOCOL_ERROR),
    "HEADERS on an even stream": (PREFACE + SETTINGS + http2.frame(http2.HEADERS, 4, 2, b"\x82"),
                                  http2.PROTOCOL_ERROR),
    "DATA on an idle stream": (PREFACE + SETTINGS + http2.frame(http2.DATA, 0, 5, b"x"),
                               http2.PROTOCOL_ERROR),
    "an HPACK block that does not decode": (PREFACE + SETTINGS + http2.frame(http2.HEADERS, 4, 1, b"\x80"),
                                            http2.COMPRESSION_ERROR),
    "the connection window beyond 2^31-1": (PREFACE + SETTINGS + http2.frame(
        http2.WINDOW_UPDATE, 0, 0, (2**31 - 1).to_bytes(4, "big")), http2.FLOW_CONTROL_ERROR),
    "DATA beyond the connection window": (PREFACE + SETTINGS + http2.headers_frames(
        1, b"\x83\x86\x84\x41\x01a", False) + b"".join(
        http2.frame(http2.DATA, 0, 1, b"z" * 16384) for _ in range(5)), http2.FLOW_CONTROL_ERROR),
    "HEADERS on a stream id below the last": (PREFACE + SETTINGS + http2.headers_frames(
        3, b"\x82\x86\x84\x41\x01a", True) + http2.headers_frames(1, b"\x82\x86\x84\x41\x01a", True),
        http2.PROTOCOL_ERROR),      # §5.1.1: an unexpected stream identifier
}


@pytest.mark.parametrize("wire, code", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_bytes_end_the_connection_with_their_error_code(wire, code):
    assert _refusal(wire) == code


def test_a_stream_error_resets_only_that_stream():
    session = ServerSession(RecordingHandler(), initial_window_size=100)
    session.receive(PREFACE + SETTINGS + http2.headers_frames(1, b"\x83\x86\x84\x41\x01a", False)
                    + http2.frame(http2.DATA, 0, 1, b"z" * 101)
                    + http2.headers_frames(3, b"\x82\x86\x84\x41\x01a", True))
    out = session.data_to_send()
    frames = http2.FrameReader().frames(out)
    resets = [(sid, int.from_bytes(p, "big")) for t, _, sid, p in frames if t == http2.RST_STREAM]
    assert resets == [(1, http2.FLOW_CONTROL_ERROR)]
    assert session.open_streams == 1                   # stream 3 goes on
