"""The HTTP ceiling: the same Flask and gunicorn settings, reading the upload exactly as pocketcnn does,
then answering a fixed JSON without decoding or inference. No service can beat this on this machine.

    gunicorn -c python:serve.gunicorn_conf bench.apps.ceiling:app
"""

import json

from flask import Flask, Response, request

app = Flask(__name__)
ANSWER = json.dumps({"model": {"name": "ceiling", "version": 1, "format": "none"},
                     "predictions": [{"label": f"class {i}", "index": i, "percent": 10.0} for i in range(10)]})


@app.post("/predict")
def predict():
    uploads = request.files.getlist("image")
    size = sum(len(upload.read()) for upload in uploads)
    if not size:
        return Response('{"error": {"code": "missing_image", "message": "no image"}}', 400, mimetype="application/json")
    return Response(ANSWER, mimetype="application/json")


@app.get("/readyz")
def readyz():
    return Response('{"status": "ready"}', mimetype="application/json")
