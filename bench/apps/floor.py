"""The floor under any service on this machine: the HTTP ceiling (bench/apps/ceiling.py) plus only the work
no service can skip. It reads the upload the same way, decodes the photo with the same decode_image and the
model's recorded input recipe to the input size of the exported .tflite file POCKETCNN_FLOOR_MODEL names, and
runs that file through the same LiteRT runner (unless POCKETCNN_FLOOR_DECODE_ONLY=1); then it answers the
ceiling's fixed JSON. Nothing else: no checks, no metrics, no ranking.

Measured beside pocketcnn in the serving benchmark, its share of the ceiling is the most any service can
reach with that photo (and that model): what pocketcnn loses below it is pocketcnn's own overhead.

    POCKETCNN_FLOOR_MODEL=models/m/1/model_dynamic_range.tflite \\
        gunicorn -c python:serve.gunicorn_conf bench.apps.floor:app
"""

import os
from pathlib import Path

from flask import Flask, Response

from bench.apps.ceiling import ANSWER, read_uploads
from contract import ManifestError, decode_image, input_recipe, read_manifest
from contract.runtime import open_runner

app = Flask(__name__)
runner = open_runner(os.environ["POCKETCNN_FLOOR_MODEL"], "litert")  # loaded in the worker, after the fork
run_model = os.environ.get("POCKETCNN_FLOOR_DECODE_ONLY") != "1"
HEIGHT, WIDTH, CHANNELS = runner.input_shape
try:  # the input recipe the model was exported with (its manifest, beside the file): what pocketcnn applies too
    RECIPE = input_recipe(read_manifest(Path(os.environ["POCKETCNN_FLOOR_MODEL"]).parent))
except ManifestError:
    RECIPE = None


@app.post("/predict")
def predict():
    pixels = decode_image(read_uploads()[0].data, HEIGHT, WIDTH, CHANNELS, recipe=RECIPE)
    if run_model:
        runner.predict(pixels[None])
    return Response(ANSWER, mimetype="application/json")


@app.get("/readyz")
def readyz():
    return Response('{"status": "ready"}', mimetype="application/json")
