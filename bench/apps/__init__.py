"""Comparison apps for the serving benchmark, run under the same gunicorn settings as pocketcnn."""
