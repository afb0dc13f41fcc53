"""gunicorn's threaded worker with a read timeout on client connections, and new connections spread
evenly over the workers.

gunicorn 27's gthread worker waits (in its poller) for a new connection's first byte, but once a
request has started it reads the rest with a blocking socket and no timeout: a client that sends half
its headers and stops holds a worker thread forever. Here every client socket gives up when no byte
arrives for POCKETCNN_READ_TIMEOUT seconds (default 10): a stalled upload releases its thread and its
connection is closed (the timeout is read from serve/settings.py when the worker starts). A flood of
more slow clients than workers x threads still needs a buffering proxy in front (nginx, a cloud load
balancer), as for any thread-per-connection server.

Every worker listens on the one shared socket, and whichever wakes first takes a new connection. Clients
that keep their connections open (browsers, load balancers, wrk) often ended up all on one worker while
the other idled: at concurrency 8, one run in three put all 8 connections on one worker and served half
the requests per second. Here each worker publishes how many connections it holds in a table shared by
all workers (gunicorn_conf creates it before the fork and gives each worker a slot), and only a worker
holding no more connections than any other listens for new ones. The least busy worker always listens, so
a connection never waits for more than a poll interval (POLL_WHILE_DEFERRING).

Why not gunicorn's own `reuse_port` (one SO_REUSEPORT socket per worker, the kernel spreading connections by a
hash), measured on 2026-11-30 with this worker's balancing taken out and reuse_port on:
- 8 kept-alive connections were split evenly in 5 of 12 trials (2-6 in 4, 3-5 in 3), against 12 of 12 here;
  the test of even spreading fails with it;
- throughput under wrk was within this machine's noise (c=8/32, 28x28 PNG 902/941 vs 927/1056 req/s here);
- but a graceful reload (SIGHUP) under load lost 9 of 6,000 requests and a graceful stop of one worker lost
  6 (connections already waiting in the stopping worker's own accept queue are reset), and a worker killed
  under load took more requests with it than it held connections: with one shared socket, none are lost.
So the shared socket and the balancing stay.
"""

from __future__ import annotations

import errno
import socket

from gunicorn.workers import gthread

from serve import draining
from serve.settings import Settings

POLL_WHILE_DEFERRING = 0.02  # seconds: how soon a worker that left new connections to others looks again
NOT_RUNNING = -1  # a slot's value while its worker is not (yet, or any more) taking connections


class ClientSocket(socket.socket):
    """A client connection whose blocking reads time out."""

    read_timeout = 10.0  # seconds; set from the settings by ThreadWorker.init_process

    def setblocking(self, flag: bool) -> None:
        # gthread switches sockets to blocking mode before reading a request: make that "blocking,
        # but for at most READ_TIMEOUT seconds without data".
        if flag:
            self.settimeout(self.read_timeout)
        else:
            super().setblocking(False)

    def recv(self, size: int, flags: int = 0) -> bytes:
        try:
            return super().recv(size, flags)
        except TimeoutError:
            # Reported like a reset so gunicorn closes the connection quietly instead of logging a traceback.
            raise ConnectionResetError(errno.ECONNRESET,
                                       f"no data from the client for {self.read_timeout:g} s") from None


class _HeadWithBody:
    """The client socket as gunicorn's Response.write sees it while sending a response's first body bytes: the head
    is held back and sent with those bytes in one sendall (see `send_head_with_body`)."""

    def __init__(self, sock):
        self.sock = sock
        self.pending = b""

    def sendall(self, data) -> None:
        if not self.pending:
            self.pending = bytes(data)  # the head: wait for the body
            return
        data, self.pending = self.pending + bytes(data), b""
        self.sock.sendall(data)

    def flush(self) -> None:
        if self.pending:
            data, self.pending = self.pending, b""
            self.sock.sendall(data)


def send_head_with_body() -> None:
    """gunicorn writes a response's head and its body with two sendall calls. A worker killed between the two
    (SIGKILL, OOM, a machine gone) leaves a head without a body on the wire: a load balancer has already passed the
    head on and cannot send the request to another replica (HAProxy logs it "SD--": 1 request in 3,000 when a
    replica was killed under load). Sent in one write, a response is on the wire whole or not at all, and a
    request that got nothing is retried elsewhere. Bodies sent in chunks or from files are left as they are."""
    from gunicorn.http.wsgi import Response

    if getattr(Response.write, "sends_head_with_body", False):
        return
    write = Response.write

    def write_head_with_body(self, arg):
        if self.headers_sent or self.chunked or self._omits_body or not isinstance(arg, bytes) or not arg:
            return write(self, arg)
        sock, self.sock = self.sock, _HeadWithBody(self.sock)
        try:
            return write(self, arg)
        finally:
            held, self.sock = self.sock, sock
            held.flush()

    write_head_with_body.sends_head_with_body = True
    Response.write = write_head_with_body


class ThreadWorker(gthread.ThreadWorker):
    # Set by gunicorn_conf.pre_fork in the master: the shared table of connection counts and this worker's
    # slot in it (both, or neither: a worker without a slot accepts like plain gthread).
    connection_counts = None
    slot: int | None = None

    def init_process(self):
        ClientSocket.read_timeout = Settings.from_env().read_timeout
        send_head_with_body()
        super().init_process()

    def publish(self, count: int) -> None:
        if self.connection_counts is not None:
            self.connection_counts[self.slot] = count

    def run(self):
        # The application is loaded (for pocketcnn: the model too, or the first attempt's wait is over).
        self.publish(0)
        self.log.info("taking connections")
        super().run()

    def wait_for_and_dispatch_events(self, timeout):
        if self.max_keepalived and draining.active():
            # Draining (serve/draining.py): gthread closes the connection after every response, saying
            # Connection: close, so clients that keep connections open take their next request elsewhere.
            self.max_keepalived = 0
        if self.connection_counts is not None:  # runs once per turn of the event loop: kept cheap
            self.publish(self.nr_conns)
            self.set_accept_enabled(self.nr_conns < self.worker_connections)
            if not self._accepting and self.nr_conns < self.worker_connections:
                timeout = min(timeout, POLL_WHILE_DEFERRING)  # others are less busy; look again soon
        return super().wait_for_and_dispatch_events(timeout)

    def set_accept_enabled(self, enabled):
        """gthread calls this when the connection limit allows accepting; accept only when no other
        running worker holds fewer connections."""
        if not self.alive:
            self.publish(NOT_RUNNING)  # stopping: others must not wait for us
        super().set_accept_enabled(enabled and self.alive and self.least_busy())

    def least_busy(self) -> bool:
        if self.connection_counts is None:
            return True
        counts = self.connection_counts[:]  # one copy of the small table, not an item read per slot
        counts[self.slot] = NOT_RUNNING
        others = [count for count in counts if count != NOT_RUNNING]
        return not others or self.nr_conns <= min(others)

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
