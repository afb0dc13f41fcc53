"""serve: a Flask app under gunicorn answering POST /predict with a percentage for every class.

    gunicorn -c python:serve.gunicorn_conf 'serve:create_app()'
"""


def create_app(test_config: dict | None = None):
    """The application factory (see serve/app.py).

    Imported lazily: gunicorn imports this package in the master to read serve.gunicorn_conf, which
    must set PROMETHEUS_MULTIPROC_DIR before prometheus_client (imported by the app) is loaded."""
    from serve.app import create_app as build

    return build(test_config)


__all__ = ["create_app"]
