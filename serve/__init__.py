"""serve: a Flask app under gunicorn answering POST /predict with a percentage for every class.

    gunicorn -c python:serve.gunicorn_conf 'serve:create_app()'
"""

from serve.app import create_app

__all__ = ["create_app"]
