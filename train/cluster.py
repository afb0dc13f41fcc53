"""Training across processes: tf.distribute.MultiWorkerMirroredStrategy, with one chief that writes.

Every worker runs the same `python -m train ...` with its own TF_CONFIG. What this module adds to the strategy:

- **Who writes.** The chief (the task of type "chief", or worker 0 when there is none) creates and writes the
  run folder; every other worker writes only to a scratch folder of its own, removed at the end.
- **Decisions taken once.** Anything that ends or changes training (early stopping, the time budget, a
  learning-rate reduction, the chief refusing a run folder) is decided on the chief and sent to every worker
  with one all-reduce (`Cluster.agree`), so no worker is left waiting in a collective its peers never join.
- **A lost peer is a clear exit.** TensorFlow's coordination service notices a worker that stopped sending
  heartbeats (about 10 s) or a connection reset (at once) and aborts the collectives; `PeerLost` turns the
  error into one sentence and exit code 3, and every worker is started again with --resume.
- **Two Keras 3.15 fixes.** Keras 3 fails inside `fit` under this strategy (keras-team/keras#20585,
  tensorflow/tensorflow#72388): it all-reduces the first input batch, a tuple, which the multi-worker
  all-reduce does not take, and it reduces every per-step scalar metric along an axis it does not have.
  `patch_keras_for_multi_worker` fixes both in the smallest way: the first batch is only used for its
  shapes, so the local one is used; per-step logs are this worker's (Keras reads the epoch's metrics again
  at the end of the epoch, and those are summed over every worker).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

PEER_LOST_EXIT = 3


class PeerLost(RuntimeError):
    """Another worker stopped (killed, crashed, unreachable) and the collectives were aborted."""


@dataclass
class Cluster:
    """This process's place in the training cluster: one worker of `worker_count`."""

    strategy: object
    task_type: str | None = None
    task_id: int = 0
    worker_count: int = 1
    chief: bool = True
    _exchange: object = field(default=None, repr=False)

    @property
    def multi_worker(self) -> bool:
        return self.worker_count > 1

    def describe(self) -> str:
        if not self.multi_worker:
            return "one worker"
        role = "the chief" if self.chief else "not the chief"
        return f"{self.task_type} {self.task_id} of {self.worker_count} workers ({role})"

    def agree(self, values: list[float], ok: bool = True) -> tuple[list[float], bool]:
        """The chief's `values` on every worker, and whether every worker said `ok`: one all-reduce that
        every worker must call at the same point (collectives are matched by order)."""
        if not self.multi_worker:
            return list(values), ok
        import numpy as np
        import tensorflow as tf

        if self._exchange is None:
            self._exchange = _make_exchange(self.strategy)
        vector = tf.constant([*values, 0.0 if ok else 1.0], dtype=tf.float64)
        result = np.asarray(self.strategy.experimental_local_results(self._exchange(vector))[0])
        return [float(v) for v in result[:-1]], bool(result[-1] == 0)


def _make_exchange(strategy):
    import tensorflow as tf

    @tf.function
    def exchange(vector):
        def on_replica(v):
            context = tf.distribute.get_replica_context()
            # Global replica 0 lives on the chief (MultiWorkerMirroredStrategy numbers the chief's first).
            first = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), v.dtype)
            mine = tf.concat([v[:-1] * first, v[-1:]], axis=0)  # values from the chief only; failures from all
            return context.all_reduce(tf.distribute.ReduceOp.SUM, mine)
        return strategy.run(on_replica, args=(vector,))

    return exchange


def make_cluster(name: str) -> Cluster:
    """The strategy named by --strategy, and this process's role in it. Must run before any other TensorFlow
    operation (the multi-worker strategy configures the runtime's collectives and starts its server)."""
    import tensorflow as tf

    if name == "mirrored":
        return Cluster(tf.distribute.MirroredStrategy())
    if name != "multi-worker":
        return Cluster(tf.distribute.get_strategy())  # the default: no distribution
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # Reads the cluster from TF_CONFIG; with no TF_CONFIG it is a single worker. Blocks until every worker
    # has started (the coordination service's registration).
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    jobs = resolver.cluster_spec().as_dict()
    count = sum(len(jobs.get(job, [])) for job in ("chief", "worker")) or 1
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    chief = (task_type == "chief") if "chief" in jobs else (task_type in (None, "worker") and task_id == 0)
    if count > 1:
        patch_keras_for_multi_worker()
    return Cluster(strategy, task_type, task_id, count, chief)


def lost_peer(err: Exception, cluster: Cluster, run_dir: Path | None = None) -> PeerLost:
    """The exception a worker raises when the collectives were aborted because a peer went away."""
    reason = failure_reason(str(getattr(err, "message", err)))
    return PeerLost(
        f"{cluster.describe()}: another worker stopped or cannot be reached, and training cannot go on without "
        f"it ({type(err).__name__}: {reason}). Every finished epoch is kept in the run folder: start every worker "
        f"again, each with its TF_CONFIG, with: python -m train --resume {run_dir or '<the run folder>'}")


def failure_reason(message: str) -> str:
    """The line of a TensorFlow error that says why the collectives stopped (its message also carries the Python
    stack of the graph node and advice about restarting, which are of no use here)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "aborted by:" in line:
            reason = line.split("aborted by:", 1)[1].strip()
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if following.startswith("/job:"):
                reason += " " + following
            break
    else:
        reason = next((line for line in reversed(lines) if not line.startswith(("[[", "The error could be"))), "")
    reason = reason.split(" [type.googleapis.com")[0]
    return reason if len(reason) <= 300 else reason[:300] + "..."


def is_peer_failure(err: Exception) -> bool:
    """An error that means the collectives were aborted (a peer died or is unreachable), not a bug here."""
    import tensorflow as tf

    if isinstance(err, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                        tf.errors.DeadlineExceededError)):
        return True
    return isinstance(err, tf.errors.OpError) and "ollective" in str(err) and "abort" in str(err).lower()


class ScratchFolder:
    """Where a worker that is not the chief writes what Keras insists on writing (checkpoints, backups,
    history): its own temporary folder, removed when training ends, however it ends."""

    def __init__(self, cluster: Cluster):
        prefix = f"pocketcnn-{cluster.task_type or 'worker'}{cluster.task_id}-"
        self.remove_left_over(prefix)
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))

    @staticmethod
    def remove_left_over(prefix: str) -> None:
        """A worker that was killed (SIGKILL, a lost machine) could not remove its folder: the next worker of the
        same task removes those whose process is gone."""
        for folder in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
            pid = folder.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


_PATCHED = False


def patch_keras_for_multi_worker() -> None:
    """Make Keras 3.15's TensorFlow trainer work under MultiWorkerMirroredStrategy (see the module's doc)."""
    global _PATCHED
    if _PATCHED:
        return
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        strategy = self.distribute_strategy
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(batches))
                break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    reduce_per_replica = trainer.reduce_per_replica

    def reduce_locally(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            reduction = "first"  # this worker's per-step logs; the epoch's come from the summed metrics
        return reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_locally
    _PATCHED = True
