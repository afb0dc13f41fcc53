"""LitServe, written as its documentation's image-classification example is: a LitAPI whose setup() loads the model,
decode_request() base64-decodes the photo from the JSON body, predict() runs the model, encode_response() answers
JSON; LitServer with as many workers as pocketcnn has, batching on when POCKETCNN_PEER_MAX_BATCH > 1. It does what
pocketcnn does for an answer: the same decode_image with the model's recorded input recipe, and the same model
file through the same LiteRT runner. Runs in .venv-peers (make peers):

    POCKETCNN_PEER_MODEL=models/fashion_mnist/1 POCKETCNN_PEER_PORT=8002 \\
        .venv-peers/bin/python -m bench.apps.litserve_peer
    curl -s -H 'Content-Type: application/json' -d '{"image": "<base64>"}' http://127.0.0.1:8002/predict
"""

import base64
import os
from pathlib import Path

import litserve as ls
import numpy as np

from contract import decode_image, input_recipe, input_size, read_manifest
from contract.runtime import open_runner

VERSION = Path(os.environ["POCKETCNN_PEER_MODEL"])
FORMAT = os.environ.get("POCKETCNN_PEER_FORMAT", "tflite_dynamic")
PORT = int(os.environ.get("POCKETCNN_PEER_PORT", "8002"))
WORKERS = int(os.environ.get("POCKETCNN_PEER_WORKERS", "2"))
MAX_BATCH = int(os.environ.get("POCKETCNN_PEER_MAX_BATCH", "1"))


class PhotoClassifierAPI(ls.LitAPI):
    def setup(self, device):
        manifest = read_manifest(VERSION)
        artifact = manifest["artifacts"][FORMAT]
        self.size = input_size(manifest)
        self.recipe = input_recipe(manifest)
        self.labels = manifest["labels"]
        self.runner = open_runner(VERSION / artifact["file"], artifact["runtime"])

    def decode_request(self, request):
        height, width, channels = self.size
        return decode_image(base64.b64decode(request["image"]), height, width, channels, recipe=self.recipe)

    def predict(self, x):
        return self.runner.predict(x[np.newaxis])[0]

    def encode_response(self, output):
        probabilities = np.asarray(output).reshape(-1)
        best = int(probabilities.argmax())
        return {"label": self.labels[best], "probabilities": [float(v) for v in probabilities]}


class BatchedPhotoClassifierAPI(PhotoClassifierAPI):
    """With batching on: LitServe collects up to max_batch_size requests, batch() stacks them, unbatch() splits."""

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.runner.predict(x)

    def unbatch(self, output):
        return list(output)


if __name__ == "__main__":
    api = (BatchedPhotoClassifierAPI(max_batch_size=MAX_BATCH, batch_timeout=0.001) if MAX_BATCH > 1
           else PhotoClassifierAPI())
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=WORKERS, timeout=30)
    server.run(host="127.0.0.1", port=PORT, generate_client_file=False, log_level="warning")
