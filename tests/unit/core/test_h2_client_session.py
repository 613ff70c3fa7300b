"""The client role of an HTTP/2 connection (ClientSession, http2_session.pxi), with the
`h2` library as the server on the other end: requests and their bodies, responses (1xx
first), trailers, flow control, the server's SETTINGS_MAX_CONCURRENT_STREAMS, GOAWAY,
and the frames a server must not send."""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe import frame as hf

from fastproxy._core.http2 import ClientSession, H2Error, RecordingHandler

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/x")]


class Pair:
    """Our client session and an h2 server, wired back to back."""

    def __init__(self, max_concurrent=None, **options):
        self.handler = RecordingHandler()
        self.session = ClientSession(self.handler, **options)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.server.initiate_connection()
        if max_concurrent is not None:
            self.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent})
        self.events = []

    def flush(self):
        for _ in range(20):
            to_server, to_client = self.session.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return
            if to_server:
                self.events += self.server.receive_data(to_server)
            if to_client:
                self.session.receive(to_client)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def handled(self, name):
        return [e for e in self.handler.events if e[0] == name]


def test_a_request_with_a_body_and_the_response_with_trailers():
    pair = Pair()
    sid = pair.session.send_request(REQUEST)
    assert sid == 1
    assert pair.session.send_data(sid, b"hello", True) == 5
    pair.flush()
    (req,) = pair.of(h2.events.RequestReceived)
    assert req.headers == REQUEST and pair.of(h2.events.DataReceived)[0].data == b"hello"
    assert pair.of(h2.events.StreamEnded)
    pair.server.send_headers(1, [(b":status", b"100")])
    pair.server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pair.server.send_data(1, b"reply")
    pair.server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    pair.flush()
    assert [e[0] for e in pair.handler.events if e[0] != "window"] == [
        "response", "response", "data", "trailers"]
    assert pair.handled("response")[0][2] == [(b":status", b"100")]
    assert pair.handled("response")[1][2][0] == (b":status", b"200")
    assert pair.handled("trailers")[0][2] == [(b"grpc-status", b"0")]
    assert pair.session.open_streams == 0


def test_streams_get_odd_ids_and_the_servers_limit_is_respected():
    pair = Pair(max_concurrent=2)
    pair.flush()
    assert pair.session.peer_max_concurrent == 2
    assert [pair.session.send_request(REQUEST, True) for _ in range(2)] == [1, 3]
    assert not pair.session.can_open()
    pair.flush()
    pair.server.send_headers(1, [(b":status", b"204")], end_stream=True)
    pair.flush()
    assert pair.session.can_open()


def test_a_response_body_beyond_the_stream_window_waits_for_consumption():
    pair = Pair(initial_window_size=16384)
    sid = pair.session.send_request(REQUEST, True)
    pair.flush()
    pair.server.send_headers(sid, [(b":status", b"200")])
    assert pair.server.local_flow_control_window(sid) == 16384
    pair.server.send_data(sid, b"x" * 16384)
    pair.flush()
    assert pair.server.local_flow_control_window(sid) == 0
    pair.session.consumed(sid, 16384)
    pair.flush()
    assert pair.server.local_flow_control_window(sid) == 16384


def test_goaway_stops_new_streams():
    pair = Pair()
    pair.session.send_request(REQUEST, True)
    pair.flush()
    pair.server.close_connection(last_stream_id=1)
    pair.flush()
    assert pair.handled("goaway") == [("goaway", 1, 0)]
    assert not pair.session.can_open()


def test_push_promise_is_a_connection_error():
    pair = Pair()
    sid = pair.session.send_request(REQUEST, True)
    pair.flush()
    f = hf.PushPromiseFrame(sid, promised_stream_id=2, data=b"\x82", flags=["END_HEADERS"])
    with pytest.raises(H2Error) as e:
        pair.session.receive(f.serialize())
    assert e.value.code == 1
    assert b"\x07" in pair.session.data_to_send()   # a GOAWAY frame went


def test_frames_of_a_stream_we_reset_are_ignored():
    pair = Pair()
    sid = pair.session.send_request(REQUEST, True)
    pair.flush()
    pair.session.reset_stream(sid, 8)
    pair.server.send_headers(sid, [(b":status", b"200")])
    pair.server.send_data(sid, b"late", end_stream=True)
    late = pair.server.data_to_send()
    pair.session.receive(late)           # no error: the stream is gone on our side
    assert not pair.handled("response")


def test_headers_on_a_stream_we_never_opened_is_a_connection_error():
    pair = Pair()
    pair.flush()
    f = hf.HeadersFrame(5, data=b"\x88", flags=["END_HEADERS"])
    with pytest.raises(H2Error) as e:
        pair.session.receive(f.serialize())
    assert e.value.code == 1
