"""A TCP forwarder a test can cut: a network partition between one process and etcd.

The process is given the forwarder's address instead of etcd's; :meth:`Partition.cut`
resets every connection and refuses new ones until :meth:`Partition.heal`, so the
process stays up and sees etcd vanish, as behind a broken link.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class Partition:
    """Forwards ``127.0.0.1:<port>`` to ``target`` (HOST:PORT) while not cut."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._open = True
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Reset every forwarded connection and refuse new ones."""
        with self._lock:
            self._open = False
            conns, self._conns = self._conns, set()
        for conn in conns:
            _reset(conn)

    def heal(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                allowed = self._open
            if not allowed:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    _reset(src)
    _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Drop a connection now: shutdown wakes the pump blocked on it, SO_LINGER 0 sends RST."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def partition(target: str) -> Iterator[Partition]:
    """A :class:`Partition` to ``target``, closed on the way out."""
    forwarder = Partition(target)
    try:
        yield forwarder
    finally:
        forwarder.close()
