"""Type stubs for the Cython HTTP/1.1 parser (fastproxy/_core/http1.pyx)."""

class ParseError(Exception):
    status: int
    detail: str
    def __init__(self, status: int, detail: str) -> None: ...

class Head:
    raw: bytes
    length: int
    start: int
    line_end: int
    version: int
    nfields: int
    framing: int          # 0 none, 1 content-length, 2 chunked, 3 until close
    content_length: int   # -1 when absent
    keep_alive: bool
    connection_upgrade: bool
    has_connection_names: bool
    error_status: int
    error_detail: str | None
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...
    def field_kind(self, i: int) -> int: ...
    def field_dropped(self, i: int) -> bool: ...
    def get(self, name: bytes | str) -> bytes | None: ...

class RequestHead(Head):
    absolute_form: bool
    expect_continue: bool
    upgrade: bool
    idempotent: bool
    host_field: int
    request_id_field: int
    xff_field: int
    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def path(self) -> bytes: ...
    @property
    def authority(self) -> bytes: ...
    @property
    def host(self) -> bytes: ...

class ResponseHead(Head):
    status: int
    request_id_field: int

class ChunkedReader:
    done: bool
    error: str | None
    def feed_bytes(self, data: bytes, extract: bool = False) -> tuple[int, list[bytes] | None]: ...

def parse_request_head(data: bytes | bytearray, max_header_bytes: int = 65536,
                       max_headers: int = 100) -> RequestHead | None: ...
def parse_response_head(data: bytes | bytearray, head_request: bool = False,
                        max_header_bytes: int = 65536, max_headers: int = 100) -> ResponseHead | None: ...

class IncrementalRequestParser:
    head: RequestHead
    def __init__(self, max_header_bytes: int = 65536, max_headers: int = 100) -> None: ...
    def feed(self, data: bytes) -> RequestHead | None: ...
