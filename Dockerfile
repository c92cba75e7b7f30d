# One image that trains (`dvc repro`) and serves (`python -m serve`). From the repo root:
#   docker build -t flowerlab .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/app/models" -v "$PWD/metrics:/app/metrics" \
#     -v "$PWD/dvc.lock:/app/dvc.lock" flowerlab                     # serve on $PORT (default 8000)
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/app" flowerlab dvc repro   # train
# Without a Docker engine: scripts/docker_smoke.sh builds and checks it with buildah.
#
# Build arguments:
#   BASE_IMAGE           any Debian-like image with Python 3.11 (python3 -m venv must work)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_CERT
#                        where pip looks, and the CA bundle it trusts; pip reads them from the
#                        environment. The defaults use PyPI only, with pip's own CA bundle. Point
#                        them at a local mirror or wheel folder (bind-mounted into the build) to
#                        install torch from disk, as scripts/docker_smoke.sh does.
# A separate serve-only target was measured and not kept: torch 2.14.1 from PyPI brings its CUDA
# libraries either way, so leaving out the training packages and git gave 5.99 GB instead of
# 6.52 GB (8% less; README.md, Docker).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CERT=

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8 PATH=/opt/venv/bin:$PATH

# git for DVC; any uid may use a mounted checkout (docker run --user); a venv works on both
# python:3.11-slim and Debian's own python3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory '*' \
 && python3 -m venv /opt/venv \
 && useradd --create-home --uid 1000 app

WORKDIR /app

# The exact pins of requirements.txt, up to its "# tests and lint" section.
COPY requirements.txt .
RUN sed '/^# tests and lint/,$d' requirements.txt > /tmp/runtime.txt \
 && pip install -r /tmp/runtime.txt \
 && rm /tmp/runtime.txt \
 && python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

# The code, plus models/, metrics/ and dvc.lock if the build context has them (.dockerignore).
COPY . .

USER app
EXPOSE 8000
HEALTHCHECK CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'))"
# Cloud Run sets $PORT.
# python -m serve: uvicorn with a graceful shutdown on SIGTERM (in-flight requests finish, exit 0).
CMD ["sh", "-c", "exec python -m serve --host 0.0.0.0 --port ${PORT:-8000}"]
