"""A gRPC server-streaming call from a reader that never reads: raw HTTP/2 with a stream window
of 0, so the server can send it no message, while its SETTINGS and PINGs are acknowledged (the
connection stays up, as a stalled but live client's would). No HTTP/2 library in the venv: the
few frames needed are built by hand (HPACK literals without indexing or Huffman)."""

from __future__ import annotations

import socket
import struct
import threading

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
ACK, END_STREAM, END_HEADERS = 1, 1, 4
INITIAL_WINDOW_SIZE = 4


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    def text(s: str) -> bytes:
        raw = s.encode()
        if len(raw) >= 127:
            raise ValueError("header too long for this encoder")
        return bytes([len(raw)]) + raw

    return b"\x00" + text(name) + text(value)


def call_headers(path: str, authority: str, *more: tuple[str, str]) -> bytes:
    """The HPACK block of a gRPC call's request headers, with `more` after the usual ones."""
    usual = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return b"".join(_literal(k, v) for k, v in [*usual, *more])


class StalledStream:
    """Opens `path` on `address` with `api_key` and never reads a message. `frames` lists the
    kinds of frame the server sent on the call's stream (1) as they arrive."""

    def __init__(self, address: str, path: str, api_key: str, request: bytes = b"") -> None:
        host, port = address.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)), timeout=10)
        self.frames: list[int] = []
        self.closed = threading.Event()
        headers = call_headers(path, address, ("authorization", "Bearer " + api_key))
        message = b"\x00" + struct.pack(">I", len(request)) + request
        self._sock.sendall(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            + _frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 0))
            + _frame(HEADERS, END_HEADERS, 1, headers)
            + _frame(DATA, END_STREAM, 1, message)
        )
        threading.Thread(target=self._read, daemon=True).start()

    def ended(self) -> bool:
        """Whether the server ended the call: trailers, a reset, or the connection closed."""
        return self.closed.is_set() or RST_STREAM in self.frames or self.frames.count(HEADERS) >= 2

    def close(self) -> None:
        self._sock.close()

    def _read(self) -> None:
        buf = b""
        try:
            while chunk := self._sock.recv(65536):
                buf += chunk
                while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
                    size = int.from_bytes(buf[:3], "big")
                    kind, flags = buf[3], buf[4]
                    stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                    payload, buf = buf[9 : 9 + size], buf[9 + size :]
                    if stream == 1:
                        self.frames.append(kind)
                    if kind == SETTINGS and not flags & ACK:
                        self._sock.sendall(_frame(SETTINGS, ACK, 0))
                    elif kind == PING and not flags & ACK:
                        self._sock.sendall(_frame(PING, ACK, 0, payload))
                    elif kind == GOAWAY:
                        self.closed.set()
        except OSError:
            pass
        self.closed.set()
