# pocketcnn service: gunicorn + Flask + LiteRT / ONNX Runtime. No TensorFlow in this image.
#
#   docker build -t pocketcnn .                                      # model repository mounted at run time
#   docker run --rm -p 8000:8000 -v "$PWD/models:/models:ro" pocketcnn
#
#   docker build -t pocketcnn --build-arg MODEL_REPOSITORY=models .  # or baked into the image
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp pocketcnn
#
# tests/test_container.py runs this file's install and start commands outside Docker (no engine
# there): a fresh virtual environment with only '.[serve]', as the user 'nobody', read-only models.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The build stage compiles the input recipe (contract/_product_photo.c): the full image of the same Python and
# Debian has the C compiler; only the virtual environment it builds goes into the slim runtime image.
ARG BUILD_IMAGE=python:3.11-bookworm

# --- build: a virtual environment with the serving extra only, pinned by constraints.txt ---------
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.py constraints.txt README.md ./
COPY contract ./contract
COPY serve ./serve
COPY clients ./clients
RUN python -m venv /opt/pocketcnn \
 && /opt/pocketcnn/bin/pip install --no-cache-dir --quiet -c constraints.txt '.[serve]'

# --- runtime: the environment, a non-root user, the model repository -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pocketcnn
COPY --from=build /opt/pocketcnn /opt/pocketcnn
ARG MODEL_REPOSITORY=docker/empty-model-repository
COPY ${MODEL_REPOSITORY} /models
ENV PATH=/opt/pocketcnn/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    POCKETCNN_MODEL_REPOSITORY=/models \
    POCKETCNN_BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/pocketcnn-metrics
USER pocketcnn
WORKDIR /tmp
EXPOSE 8000
VOLUME ["/models"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["gunicorn", "-c", "python:serve.gunicorn_conf", "serve:create_app()"]
