"""gunicorn's threaded worker with a read timeout on client connections.

gunicorn 27's gthread worker waits (in its poller) for a new connection's first byte, but once a
request has started it reads the rest with a blocking socket and no timeout: a client that sends half
its headers and stops holds a worker thread forever. Here every client socket gives up when no byte
arrives for POCKETCNN_READ_TIMEOUT seconds (default 10): a stalled upload releases its thread and its
connection is closed. A flood of more slow clients than workers x threads still needs a buffering
proxy in front (nginx, a cloud load balancer), as for any thread-per-connection server.
"""

from __future__ import annotations

import errno
import os
import socket

from gunicorn.workers import gthread

READ_TIMEOUT = float(os.environ.get("POCKETCNN_READ_TIMEOUT", "10"))


class ClientSocket(socket.socket):
    """A client connection whose blocking reads time out."""

    def setblocking(self, flag: bool) -> None:
        # gthread switches sockets to blocking mode before reading a request: make that "blocking,
        # but for at most READ_TIMEOUT seconds without data".
        if flag:
            self.settimeout(READ_TIMEOUT)
        else:
            super().setblocking(False)

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            return super().recv(size, flags)
        except TimeoutError:
            # Reported like a reset so gunicorn closes the connection quietly instead of logging a traceback.
            raise ConnectionResetError(errno.ECONNRESET, f"no data from the client for {READ_TIMEOUT:g} s") from None


class ThreadWorker(gthread.ThreadWorker):
    def accept(self, listener):
        """gthread's accept, with the client socket as a ClientSocket."""
        try:
            accepted, client_addr = listener.accept()
            client_sock = ClientSocket(accepted.family, accepted.type, accepted.proto, fileno=accepted.detach())
            self.nr_conns += 1
            client_sock.setblocking(True)
            conn = gthread.TConn(self.cfg, client_sock, client_addr, listener.getsockname())
            self.enqueue_req(conn)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
