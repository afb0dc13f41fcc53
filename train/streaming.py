"""tf.data pipelines for a StreamedDataset: file list -> parallel decode (contract.decode_image, through the run's
input recipe) -> batch -> prefetch. Only a few batches are in memory at a time, whatever the number of photos.

Under the multi-worker strategy each worker reads only its own share of the files (sharded by file, before any
decoding), in batches of the per-replica size; on one worker the batches are the global --batch-size.
"""

from __future__ import annotations

import math

from train.data import FileSplit, StreamedDataset


def file_batches(dataset: StreamedDataset, split: FileSplit, batch_size: int, shards: int = 1, shard: int = 0,
                 shuffle_seed: int | None = None, repeat: bool = False):
    """Batches of (images as float32, labels) from the files of `split` (this worker's `shard` of `shards`).

    shuffle_seed: shuffle the file order, anew on every pass (training); None: in order (validation, test).
    repeat: start again at the end (training, with steps_per_epoch): every worker then always has a next batch."""
    import tensorflow as tf

    height, width, channels = dataset.input_shape

    def decode(path):
        return dataset.decode(path.decode())

    def load(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        return tf.ensure_shape(image, (height, width, channels)), label

    files = tf.data.Dataset.from_tensor_slices((tf.constant(split.paths, dtype=tf.string),
                                                tf.constant(split.labels, dtype=tf.int64)))
    if shards > 1:
        files = files.shard(shards, shard)
    if shuffle_seed is not None:
        # File names only: a buffer of the whole shard is a full shuffle and costs a few bytes per photo.
        files = files.shuffle(max(1, math.ceil(len(split) / shards)), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        files = files.repeat()
    images = files.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=shuffle_seed is None)
    batches = images.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded above
    return batches.prefetch(tf.data.AUTOTUNE).with_options(options)


def fit_inputs(dataset: StreamedDataset, config, cluster) -> dict:
    """model.fit's arguments for a streamed dataset: training batches (shuffled, repeated; steps_per_epoch says
    where an epoch ends), validation batches (in order, each image once), for one worker or for several."""
    import tensorflow as tf

    global_batch = config.batch_size
    steps_per_epoch = math.ceil(len(dataset.train) / global_batch)

    def training(context):
        return file_batches(dataset, dataset.train, context.get_per_replica_batch_size(global_batch),
                            context.num_input_pipelines, context.input_pipeline_id,
                            shuffle_seed=config.seed, repeat=True)

    def validation(context):
        batches = file_batches(dataset, dataset.val, context.get_per_replica_batch_size(global_batch),
                               context.num_input_pipelines, context.input_pipeline_id)
        if context.num_input_pipelines > 1:
            # Workers' shards may differ by a batch. Keras runs as many validation steps as the local dataset
            # says it has, and a worker that stopped one step early would leave the others waiting in a
            # collective: with the count unknown, every worker asks for batches until none has one left
            # (tf.distribute's partial-batch handling gives a worker that ran out an empty batch meanwhile).
            # (Keras then warns that the input "ran out of data" at the end of each validation: expected.)
            batches = batches.filter(lambda x, y: True)  # a filter makes the count unknown
        return batches

    if cluster.multi_worker:
        strategy = cluster.strategy
        train_data = strategy.distribute_datasets_from_function(training)
        val_data = strategy.distribute_datasets_from_function(validation)
    else:
        context = tf.distribute.InputContext()  # one pipeline, one replica: the global batch
        train_data, val_data = training(context), validation(context)
    return {"x": train_data, "validation_data": val_data, "steps_per_epoch": steps_per_epoch,
            "shuffle": False}  # the pipeline shuffles the files itself
