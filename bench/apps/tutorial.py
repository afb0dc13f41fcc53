"""The tutorial way (what most blog posts deploy): Flask, keras.models.load_model at import time and
model.predict for every request. Used only as the baseline of the serving benchmark.

    POCKETCNN_TUTORIAL_MODEL=runs/latest/best.keras gunicorn -c python:serve.gunicorn_conf bench.apps.tutorial:app
"""

import os

import keras
import numpy as np
from flask import Flask, jsonify, request
from PIL import Image

app = Flask(__name__)
model = keras.models.load_model(os.environ["POCKETCNN_TUTORIAL_MODEL"])
labels = [line for line in open(os.path.join(os.path.dirname(os.environ["POCKETCNN_TUTORIAL_MODEL"]), "labels.txt"))
          .read().splitlines() if line]
height, width, channels = model.input_shape[1:]


@app.post("/predict")
def predict():
    image = Image.open(request.files["image"]).convert("L" if channels == 1 else "RGB").resize((width, height))
    x = np.asarray(image, dtype="float32").reshape(1, height, width, channels)
    probabilities = model.predict(x, verbose=0)[0]
    return jsonify({"predictions": [{"label": labels[i], "percent": float(probabilities[i]) * 100}
                                    for i in np.argsort(-probabilities)]})


@app.get("/readyz")
def readyz():
    return jsonify({"status": "ready"})
