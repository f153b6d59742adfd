"""Idle and slow HTTP clients held open against a server on 127.0.0.1.

Used by tests/merge/test_slow_clients.py (the service still answers others while they are
held) and by the benchmark (how long a fast client waits meanwhile). Three kinds of
connection, in turn: idle (connected, nothing sent: a browser's pre-opened or a
client's idle keep-alive connection), slow headers (a request line and a few headers,
then one more header line now and then, never the blank line) and slow body (complete
headers announcing a body, only part of it sent).
"""

from __future__ import annotations

import contextlib
import resource
import socket

KINDS = ("idle", "slow headers", "slow body")
SLOW_BODY = b'{"email": "slow@example.com", "phoneNumber": "5550001"}'


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft limit on open files towards `needed` (children inherit it);
    returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


class SlowClients:
    """`count` connections to 127.0.0.1:port, a third of each kind, held until close()."""

    def __init__(self, port: int, count: int):
        self.port, self.count = port, count
        self.sockets: list[tuple[str, socket.socket]] = []

    def open(self) -> None:
        """Connect them all and send each kind's opening bytes."""
        for index in range(self.count):
            kind = KINDS[index % len(KINDS)]
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            if kind == "slow headers":
                sock.sendall(
                    b"POST /identify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                )
            elif kind == "slow body":
                sock.sendall(
                    b"POST /identify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(SLOW_BODY)}\r\n\r\n".encode()
                    + SLOW_BODY[:5]
                )
            self.sockets.append((kind, sock))

    def trickle(self) -> None:
        """One more header line on every slow-headers connection (never the end of the headers)."""
        for kind, sock in self.sockets:
            if kind == "slow headers":
                sock.sendall(b"X-Slow: 1\r\n")

    def finish(self, kind: str, how_many: int) -> list[int]:
        """Complete the requests of `how_many` connections of a kind; their HTTP statuses."""
        statuses = []
        for sock_kind, sock in [(k, s) for k, s in self.sockets if k == kind][:how_many]:
            if sock_kind == "slow headers":
                sock.sendall(f"Content-Length: {len(SLOW_BODY)}\r\n\r\n".encode() + SLOW_BODY)
            elif sock_kind == "slow body":
                sock.sendall(SLOW_BODY[5:])
            else:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            statuses.append(read_status(sock))
        return statuses

    def close(self) -> None:
        for _, sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.sockets = []


def read_status(sock: socket.socket) -> int:
    """The status code of the response arriving on a raw socket (0 when it closes first)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return 0
        data += chunk
    return int(data.split(b" ", 2)[1])
