"""gunicorn settings for pocketcnn:  gunicorn -c python:serve.gunicorn_conf 'serve:create_app()'

Every value comes from serve/settings.py (environment variables POCKETCNN_*): the bind address, workers,
threads, timeouts and logging here; the model settings in the workers' create_app().
"""

import os

# numpy's BLAS single-threaded in every worker, set before anything imports numpy: the workers' threads are the
# parallelism. Measured with the out-of-distribution detector's 784 x 784 product on a busy 2-core machine:
# 16 ms per request with OpenBLAS's own threads spinning against the workers', 0.15 ms with one.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import shutil  # noqa: E402
import tempfile  # noqa: E402
from multiprocessing.sharedctypes import RawArray  # noqa: E402

from serve import draining  # noqa: E402
from serve.gunicorn_worker import NOT_RUNNING  # noqa: E402
from serve.settings import Settings  # noqa: E402

settings = Settings.from_env()  # a bad value stops gunicorn here, with the variable's name in the message
bind = settings.bind
# One worker per core, each inference single-threaded (POCKETCNN_INFERENCE_THREADS=1): workers x
# intra-op threads = cores, so requests never fight over CPUs. Threads overlap network I/O.
workers = settings.worker_count
threads = settings.threads
worker_class = "serve.gunicorn_worker.ThreadWorker"  # gthread + a read timeout (POCKETCNN_READ_TIMEOUT)
preload_app = False  # each worker imports and loads the model after the fork: runtimes are not fork-safe
timeout = settings.request_timeout  # a stuck worker is killed and replaced
graceful_timeout = 10  # after the drain (POCKETCNN_DRAIN_SECONDS): requests in flight get this long to finish
keepalive = 5
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
errorlog = "-"
loglevel = settings.log_level
accesslog = settings.access_log or None  # off by default: it costs throughput
proc_name = "pocketcnn"
control_socket_disable = True  # gunicorn 27's shared ~/.gunicorn socket: unused, and absent for a home-less user

# Prometheus: every worker writes its samples into one shared folder; /metrics sums them. This must be
# set before prometheus_client is imported, which is why serve/__init__.py imports the app lazily.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pocketcnn-metrics-")


# SIGTERM drains first (serve/draining.py): the flag the workers read is shared memory made here, before the fork.
draining.share()


def when_ready(server):
    draining.install(server, settings.drain_seconds)


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(folder, ignore_errors=True)  # samples of an earlier run would be added to ours
    os.makedirs(folder, exist_ok=True)


# Connections held by each worker, in memory shared with the workers (created here, in the master, before
# any fork): serve.gunicorn_worker.ThreadWorker uses it to send new connections to the least busy worker.
# Twice the workers, for a graceful reload (old and new workers overlap); a worker beyond that (more added
# with TTIN) gets no slot and accepts like plain gthread. Small, because every worker reads it on every
# turn of its event loop.
CONNECTION_COUNTS = RawArray("i", [NOT_RUNNING] * (2 * workers + 2))


def pre_fork(server, worker):
    used = {getattr(other, "slot", None) for other in server.WORKERS.values()}
    worker.slot = next((slot for slot in range(len(CONNECTION_COUNTS)) if slot not in used), None)
    if worker.slot is not None:
        CONNECTION_COUNTS[worker.slot] = NOT_RUNNING  # until the worker's loop runs
        worker.connection_counts = CONNECTION_COUNTS


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    if getattr(worker, "slot", None) is not None:
        CONNECTION_COUNTS[worker.slot] = NOT_RUNNING


def post_fork(server, worker):
    # The service's own log lines ("serving fashion_mnist v1 ...; self-check: ...", "not serving ...")
    # go to gunicorn's error log with its timestamp, worker pid and level. Without this only warnings
    # reached stderr, bare, through logging's last-resort handler, and a load was never logged at all.
    import logging

    gunicorn_log = logging.getLogger("gunicorn.error")
    service_log = logging.getLogger("pocketcnn")
    service_log.handlers = list(gunicorn_log.handlers)
    service_log.setLevel(gunicorn_log.level)
    service_log.propagate = False
