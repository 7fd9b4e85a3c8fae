# DriftRec service image: the same steps as `make serve` (migrate, import, ensure a model, run).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DRIFTREC_HOST=0.0.0.0

RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/driftrec

# torch first and pinned (the registry's build, which also runs on a CUDA host), then the project.
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md alembic.ini Makefile ./
COPY bench ./bench
COPY app ./app
COPY training ./training
COPY migrations ./migrations
COPY configs ./configs
RUN pip install --no-cache-dir -e . && touch /usr/local/.installed

EXPOSE 8000
# Binding 0.0.0.0 requires DRIFTREC_API_KEYS (without keys the service binds to 127.0.0.1 only).
CMD ["make", "serve", "VENV=/usr/local", "PYTHON=python"]
