"""Draining: on SIGTERM, say "not ready" first, keep serving, then stop.

A load balancer (HAProxy's health checks, a Kubernetes Service's endpoints) only stops sending requests to an
instance after it has noticed that the instance is going: gunicorn's own SIGTERM closes the listening socket at
once, and requests sent in the meantime would be refused. With POCKETCNN_DRAIN_SECONDS > 0, SIGTERM to gunicorn's
master instead
  1. makes every worker answer GET /readyz with 503 ("draining") and every response carry Connection: close,
     while requests are still served as usual, for POCKETCNN_DRAIN_SECONDS;
  2. then stops gracefully as before: no new connections; requests in flight finish (gunicorn's graceful_timeout).
A second SIGTERM during the drain stops at once (gracefully). SIGINT and SIGQUIT stop at once, as before.

The flag lives in memory shared by the master and its workers, created by serve/gunicorn_conf.py before the fork.
"""

from __future__ import annotations

import signal
import threading
from multiprocessing.sharedctypes import RawValue

_flag = None  # RawValue('b'): 1 while draining; None outside gunicorn (Flask's test client, create_app alone)


def share() -> None:
    """Create the shared flag (in gunicorn's master, before any worker is forked)."""
    global _flag
    _flag = RawValue("b", 0)


def active() -> bool:
    """True once the master has started draining."""
    return _flag is not None and _flag.value == 1


def install(server, seconds: float) -> None:
    """Replace the master's SIGTERM handling by: drain for `seconds`, then gunicorn's graceful stop."""
    if seconds <= 0 or _flag is None:
        return
    graceful_stop = server.handle_term

    def handle_term():
        if active():  # the drain is over (or a second SIGTERM): stop as gunicorn does
            graceful_stop()
        _flag.value = 1
        server.log.info("SIGTERM: draining for %g s (/readyz answers 503, requests are still served), "
                        "then a graceful stop", seconds)
        timer = threading.Timer(seconds, server.signal, args=(signal.SIGTERM, None))
        timer.daemon = True
        timer.start()

    server.handle_term = handle_term
