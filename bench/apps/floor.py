"""The floor under any service on this machine: the HTTP ceiling (bench/apps/ceiling.py) plus only the work
no service can skip. It reads the upload the same way, decodes the photo with the same decode_image and,
when POCKETCNN_FLOOR_MODEL names an exported .tflite file, runs it through the same LiteRT runner; then it
answers the ceiling's fixed JSON. Nothing else: no checks, no metrics, no ranking.

Measured beside pocketcnn in the serving benchmark, its share of the ceiling is the most any service can
reach with that photo (and that model): what pocketcnn loses below it is pocketcnn's own overhead.

    gunicorn -c python:serve.gunicorn_conf bench.apps.floor:app                      # decode only
    POCKETCNN_FLOOR_MODEL=models/m/1/model_dynamic_range.tflite gunicorn ... bench.apps.floor:app
"""

import os

from flask import Flask, Response, request

from bench.apps.ceiling import ANSWER
from contract import decode_image
from contract.runtime import open_runner
from serve.multipart import boundary_of, parse_multipart

HEIGHT, WIDTH, CHANNELS = 28, 28, 1  # the Fashion-MNIST model's input, decoded even when no model runs
app = Flask(__name__)
model_file = os.environ.get("POCKETCNN_FLOOR_MODEL")
runner = open_runner(model_file, "litert") if model_file else None  # loaded in the worker, after the fork


@app.post("/predict")
def predict():
    uploads = parse_multipart(request.get_data(cache=False), boundary_of(request.content_type)).file_list("image")
    pixels = decode_image(uploads[0].data, HEIGHT, WIDTH, CHANNELS)
    if runner is not None:
        runner.predict(pixels[None])
    return Response(ANSWER, mimetype="application/json")


@app.get("/readyz")
def readyz():
    return Response('{"status": "ready"}', mimetype="application/json")
