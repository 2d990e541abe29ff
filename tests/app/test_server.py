"""The HTTP server's limits (app.serve), with raw sockets against a real uvicorn on 127.0.0.1."""

import socket
import threading
import time

import pytest
import uvicorn

from app.main import create_app
from app.serve import GuardedH11Protocol, uvicorn_options
from app.settings import Settings

KEY = "server-test-key"
SETTINGS = Settings(
    api_keys=(KEY,), max_header_bytes=8 * 1024, keep_alive_timeout=1, max_connections=8, body_idle_timeout=1
)
WAIT = 8.0  # seconds any single wait for the server may take: every loop here is bounded


class QuickProtocol(GuardedH11Protocol):
    header_timeout = 1.0
    max_header_bytes = SETTINGS.max_header_bytes
    max_connections = SETTINGS.max_connections


@pytest.fixture(scope="module")
def server(fake_editor):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        create_app(SETTINGS, editor=fake_editor),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        **{**uvicorn_options(SETTINGS), "http": QuickProtocol},
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.started
    yield port
    running.should_exit = True
    thread.join(WAIT)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a timeout fails the test); a reset, sent
    when the server closes with unread bytes of ours, also counts as closed."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def request(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def test_headers_beyond_the_limit_are_refused_and_the_connection_closed(server):
    with connect(server) as sock:
        sock.sendall(request("/healthz", f"X-Filler: {'a' * 20_000}\r\n"))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in answer


def test_a_hundred_thousand_headers_are_refused(server):
    with connect(server) as sock:
        try:
            sock.sendall(request("/healthz", "".join(f"X-{i}: 1\r\n" for i in range(100_000))))
        except (BrokenPipeError, ConnectionResetError):
            return  # closed before the whole flood arrived
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431")


def test_a_connection_that_sends_nothing_is_closed(server):
    with connect(server) as sock:
        assert read_until_closed(sock) == b""


def test_half_sent_headers_are_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert read_until_closed(sock) == b""


def test_headers_sent_a_byte_at_a_time_cannot_keep_a_connection_open(server):
    with connect(server) as sock:
        started = time.monotonic()
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_until_closed(sock) == b"" and time.monotonic() - started < WAIT


def test_an_idle_keep_alive_connection_is_closed_after_its_answer(server):
    with connect(server) as sock:
        sock.sendall(request("/healthz"))
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'{"status":"ok"}')


def test_connections_beyond_the_cap_are_closed_as_they_open(server):
    held = [connect(server) for _ in range(SETTINGS.max_connections)]
    try:
        time.sleep(0.2)
        with connect(server) as extra:
            extra.sendall(request("/healthz"))
            assert read_until_closed(extra) == b""
    finally:
        for sock in held:
            sock.close()


def test_with_keys_an_upload_without_one_is_401_before_its_body_arrives(server):
    with connect(server) as sock:
        sock.sendall(
            request(
                "/v1/age",
                "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 19000000\r\n",
                method="POST",
            )
        )
        answer = read_until_closed(sock)  # no body byte was sent: the server answers and closes
    assert answer.startswith(b"HTTP/1.1 401") and b'"unauthorized"' in answer


def test_a_stalled_upload_with_a_key_is_closed_with_a_json_408(server):
    with connect(server) as sock:
        sock.sendall(
            request(
                "/v1/age",
                f"Authorization: Bearer {KEY}\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\n"
                "Content-Length: 1000000\r\n",
                method="POST",
            )
            + b"--x\r\n"
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b'"upload_timeout"' in answer
