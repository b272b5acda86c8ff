# The SSDLite detection service (and, with the GPU `train` profile of docker-compose.yml, training).
# PyPI's torch wheel carries CUDA, so the one image serves on CPU (onnxruntime) and trains on a GPU.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SSDLITE_HOST=0.0.0.0 \
    SSDLITE_PORT=8000 \
    SSDLITE_HOME=/models

# libgomp1: OpenMP for onnxruntime and torch on the CPU.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY . .
# trackers without its dependencies: it declares opencv-python, which would clash with opencv-python-headless.
RUN pip install ".[serve,train,track]" \
    && pip install --no-deps "trackers==2.6.1" \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /models \
    && chown app /models

USER app
# The model zoo's cache: the person detector is fetched and converted on first start, then reused.
VOLUME /models
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["python", "-m", "service"]
