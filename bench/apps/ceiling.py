"""The HTTP ceiling: the same Flask and gunicorn settings, reading the upload exactly as pocketcnn does
(the whole body, then serve.multipart), then answering a fixed JSON without decoding or inference. No
service can beat this on this machine.

    gunicorn -c python:serve.gunicorn_conf bench.apps.ceiling:app
"""

import json

from flask import Flask, Response, request

from serve.multipart import boundary_of, parse_multipart

app = Flask(__name__)
ANSWER = json.dumps({"model": {"name": "ceiling", "version": 1, "format": "none"},
                     "predictions": [{"label": f"class {i}", "index": i, "percent": 10.0} for i in range(10)]})


def read_uploads():
    """The request's multipart 'image' files, read as pocketcnn reads them (the whole body, then serve.multipart)."""
    return parse_multipart(request.get_data(cache=False), boundary_of(request.content_type)).file_list("image")


@app.post("/predict")
def predict():
    uploads = read_uploads()
    size = sum(len(upload.data) for upload in uploads)
    if not size:
        return Response('{"error": {"code": "missing_image", "message": "no image"}}', 400, mimetype="application/json")
    return Response(ANSWER, mimetype="application/json")


@app.get("/readyz")
def readyz():
    return Response('{"status": "ready"}', mimetype="application/json")
