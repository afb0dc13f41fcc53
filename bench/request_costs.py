"""Where one /predict request's time goes, inside the worker (no HTTP, no gunicorn): the whole WSGI call
of pocketcnn, of the HTTP ceiling app and of the floor app (the ceiling plus decoding and the model, nothing
else), of pocketcnn without its out-of-distribution score, without its metrics and without either, and
pocketcnn's parts timed one by one. The difference between pocketcnn's and the ceiling's whole calls is what
pocketcnn adds to the ceiling per request, and pocketcnn minus the floor is its own overhead; wrk's figures add
gunicorn's own share on top of all of them.

    python -m bench.request_costs --models bench/models
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import timeit
from pathlib import Path

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="pocketcnn-costs-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.serve_bench import ROOT, make_images, multipart  # noqa: E402

# What each timing is, in the order printed; the parts are pocketcnn's own steps, one by one.
LABELS = {
    "ceiling": "ceiling, whole call",
    "floor": "floor (ceiling + decode + model), whole call",
    "pocketcnn": "pocketcnn, whole call",
    "without_ood": "pocketcnn without the out-of-distribution score, whole call",
    "without_metrics": "pocketcnn without metrics, whole call",
    "without_both": "pocketcnn without either, whole call",
    "read": "  read the upload (in a request context)",
    "decode": "  decode_image (and the input recipe)",
    "model": "  model and out-of-distribution score",
    "model_alone": "  the model alone (what the floor runs)",
    "metrics": "  metrics (the five updates of a /predict)",
    "answer": "  rank and JSON answer",
}


def required_ms(costs: dict) -> float:
    """What the out-of-distribution score and the metrics cost inside pocketcnn's whole call (pocketcnn minus
    pocketcnn without either), ms: the part of its cost beyond the floor that the design asks for. Timed apart
    in a warm loop they cost about half as much, probably because inside a request their code and data are no
    longer in the caches."""
    return costs["pocketcnn"] - costs["without_both"]


class _Unrecorded:
    """A metric that records nothing (for pocketcnn timed without its metrics)."""

    def observe(self, value: float) -> None:
        pass

    def inc(self, amount: float = 1) -> None:
        pass


def without_metrics(app) -> None:
    """Take the metrics out of a pocketcnn app: its timing and counting hooks, and what /predict records."""
    app.before_request_funcs[None] = [f for f in app.before_request_funcs[None] if f.__name__ != "start_timer"]
    app.after_request_funcs[None] = [f for f in app.after_request_funcs[None] if f.__name__ != "record"]
    metrics = app.extensions["pocketcnn_metrics"]
    metrics.decode_ms = metrics.inference_ms = metrics.images = _Unrecorded()


def without_ood(app) -> None:
    """Serve a pocketcnn app's model without its out-of-distribution detector, from a runner that does not keep
    the features readable."""
    from contract.runtime import open_runner

    model = app.extensions["pocketcnn"].current
    artifact = model.manifest["artifacts"][model.format]
    model.detector = None
    model.runner = open_runner(model.path / artifact["file"], artifact["runtime"])


def wsgi_environ(body: bytes, content_type: str) -> dict:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "SERVER_NAME": "bench", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body))}


def whole_call(app, body: bytes, content_type: str):
    def call():
        statuses = []
        result = app.wsgi_app(wsgi_environ(body, content_type),
                              lambda status, headers, exc=None: statuses.append(status))
        b"".join(result)
        result.close()
        if not statuses[0].startswith("200"):
            raise RuntimeError(f"{statuses[0]} from {app.name}")
    return call


def best_ms(functions: dict, number: int, repeat: int = 5) -> dict:
    """ms per call of each function, the best of `repeat` timings of `number` calls. The functions take turns
    within every repeat: this machine's speed drifts within a minute, and timings taken one function after
    another would put that drift into their differences."""
    for function in functions.values():
        function()
    best = {key: float("inf") for key in functions}
    for _ in range(repeat):
        for key, function in functions.items():
            best[key] = min(best[key], timeit.timeit(function, number=number) / number * 1000)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.request_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models",
                        help="a model repository with a published version (default: bench/models)")
    parser.add_argument("--number", type=int, default=400, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=25,
                        help="timings per function, taken in turn with the others' (the best one counts): many short "
                             "ones give every function its share of the machine's fast moments")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from flask import request

    from bench.apps.ceiling import app as ceiling
    from serve import create_app
    from serve.inputs import read_uploads
    from serve.predict import decode_uploads, rank
    from serve.responses import json_response

    app = create_app({"MODEL_REPOSITORY": str(args.models), "LOAD_IN_BACKGROUND": False, "POLL_SECONDS": 0})
    model = app.extensions["pocketcnn"].current
    metrics = app.extensions["pocketcnn_metrics"]
    if model is None:
        raise SystemExit(f"no servable model in {args.models}: {app.extensions['pocketcnn'].reason}")
    os.environ["POCKETCNN_FLOOR_MODEL"] = str(model.path / model.manifest["artifacts"][model.format]["file"])
    from bench.apps.floor import app as floor

    settings = {"MODEL_REPOSITORY": str(args.models), "LOAD_IN_BACKGROUND": False, "POLL_SECONDS": 0}
    ablated = {"without_ood": create_app(settings), "without_metrics": create_app(settings),
               "without_both": create_app(settings)}
    without_ood(ablated["without_ood"])
    without_metrics(ablated["without_metrics"])
    without_ood(ablated["without_both"])
    without_metrics(ablated["without_both"])

    images = make_images(Path(tempfile.mkdtemp(prefix="pocketcnn-costs-")))
    results = {}
    for name, path in images.items():
        body, content_type = multipart(path)

        def read(body=body, content_type=content_type):
            with app.request_context(wsgi_environ(body, content_type)):
                return read_uploads(request, 16)[0]

        uploads = read()
        pixels, doubt = decode_uploads(uploads, model, 10 ** 9)
        probabilities, _ = model.classify(pixels, doubt)

        def record_metrics():  # what serve/predict.py and the hooks of serve/metrics.py record for one /predict
            metrics.decode_ms.observe(1.0)
            metrics.inference_ms.observe(0.3)
            metrics.images.inc(1)
            metrics.count_request("/predict", "POST", 200)
            metrics.observe_request_ms("/predict", 1.5)
        costs = best_ms({
            "ceiling": whole_call(ceiling, body, content_type),
            "floor": whole_call(floor, body, content_type),
            "pocketcnn": whole_call(app, body, content_type),
            "read": read,
            "decode": lambda uploads=uploads: decode_uploads(uploads, model, 10 ** 9),
            "model": lambda pixels=pixels, doubt=doubt: model.classify(pixels, doubt),
            "model_alone": lambda pixels=pixels: model.runner.predict(pixels),
            "metrics": record_metrics,
            "answer": lambda first=probabilities[0]: json_response({"model": model.describe(), "predictions":
                                                                   rank(first, model.labels, None)}),
            **{key: whole_call(other, body, content_type) for key, other in ablated.items()},
        }, args.number, args.repeat)
        results[name] = costs
        print(f"{name} ({len(body):,} bytes uploaded, {model.format}), ms per request, best of {args.repeat} x "
              f"{args.number}:")
        for key, value in costs.items():
            print(f"  {LABELS[key]:<44} {value:7.3f}")
        print(f"  pocketcnn adds {costs['pocketcnn'] - costs['ceiling']:.3f} ms to the ceiling's call; decoding and "
              f"the model are {costs['decode'] + costs['model']:.3f} ms of it; "
              f"{costs['pocketcnn'] - costs['floor']:.3f} ms "
              f"more than the floor, of which {required_ms(costs):.3f} ms is the out-of-distribution score and the "
              "metrics")
    app.extensions["pocketcnn"].stop()
    for other in ablated.values():
        other.extensions["pocketcnn"].stop()
    results = {"format": model.format, "number": args.number, "repeat": args.repeat, "ms": results}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
