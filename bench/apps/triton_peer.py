"""Triton Inference Server, as a user of nvidia-pytriton would run it: the real Triton server (bundled in the
wheel, CPU only here), a Python inference callable bound with the @batch decorator, dynamic batching on, and as many
model instances as pocketcnn has workers. The callable does what pocketcnn does for an answer: the same
decode_image with the model's recorded input recipe, and the same model file through the same LiteRT runner.
Clients speak the Open Inference Protocol to it: POST /v2/models/<name>/infer, input "image" (BYTES, an encoded
photo per element, binary tensor extension), output "probabilities".

Runs in .venv-peers (make peers: pytriton needs numpy < 2), with LD_LIBRARY_PATH at this Python's lib directory (else
Triton's Python backend loads the system's libpython):

    POCKETCNN_PEER_MODEL=models/fashion_mnist/1 POCKETCNN_PEER_FORMAT=tflite_dynamic POCKETCNN_PEER_PORT=8001 \\
        LD_LIBRARY_PATH=$(.venv-peers/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \\
        .venv-peers/bin/python -m bench.apps.triton_peer
"""

import os
from pathlib import Path

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from contract import decode_image, input_recipe, input_size, read_manifest
from contract.runtime import open_runner

VERSION = Path(os.environ["POCKETCNN_PEER_MODEL"])
FORMAT = os.environ.get("POCKETCNN_PEER_FORMAT", "tflite_dynamic")
PORT = int(os.environ.get("POCKETCNN_PEER_PORT", "8001"))
INSTANCES = int(os.environ.get("POCKETCNN_PEER_WORKERS", "2"))
MAX_BATCH = int(os.environ.get("POCKETCNN_PEER_MAX_BATCH", "32"))

manifest = read_manifest(VERSION)
artifact = manifest["artifacts"][FORMAT]
HEIGHT, WIDTH, CHANNELS = input_size(manifest)
RECIPE = input_recipe(manifest)


def make_infer():
    """One model instance: its own runner (LiteRT interpreters are not thread-safe)."""
    runner = open_runner(VERSION / artifact["file"], artifact["runtime"])

    @batch
    def infer(image: np.ndarray):
        pixels = np.stack([decode_image(bytes(photo[0]), HEIGHT, WIDTH, CHANNELS, recipe=RECIPE) for photo in image])
        return {"probabilities": runner.predict(pixels)}

    return infer


def main() -> None:
    config = TritonConfig(http_address="127.0.0.1", http_port=PORT, grpc_address="127.0.0.1", grpc_port=PORT + 1,
                          metrics_port=PORT + 2, allow_metrics=False, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=manifest["name"],
            infer_func=[make_infer() for _ in range(INSTANCES)],
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(len(manifest["labels"]),))],
            config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher(max_queue_delay_microseconds=100)),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    main()
