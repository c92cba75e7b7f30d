# One image for training (dvc repro) and serving (uvicorn). Build from the repo root:
#   docker build -t flowerlab .
#   docker run --rm -p 8000:8000 -v "$PWD/models:/app/models" -v "$PWD/metrics:/app/metrics" flowerlab
#   docker run --rm -v "$PWD:/app" flowerlab dvc repro        # train inside the image
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /app

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
RUN useradd --create-home app && chown -R app /app
USER app

EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["uvicorn", "serve.app:app", "--host", "0.0.0.0", "--port", "8000"]
