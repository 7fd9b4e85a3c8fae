# DriftRec service image: the same steps as `make serve` (migrate, import, ensure a model, run).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    DRIFTREC_HOST=0.0.0.0

RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/driftrec

# Exactly the locked versions (as `make serve` installs them), in a layer of their own so a code
# change does not reinstall them. requirements.lock is the service and training only: the test
# and lint tools, Ray and faiss are in requirements-dev.lock, never in the image. torch==2.13.0
# is the registry's build here, which also runs on a CUDA host (it brings the CUDA libraries it
# needs); the lock pins everything else.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml README.md alembic.ini Makefile ./
COPY bench ./bench
COPY app ./app
COPY training ./training
COPY migrations ./migrations
COPY configs ./configs
# The project itself, resolving nothing again.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . && touch /usr/local/.installed

EXPOSE 8000
# Binding 0.0.0.0 requires DRIFTREC_API_KEYS (without keys the service binds to 127.0.0.1 only).
CMD ["make", "serve", "VENV=/usr/local", "PYTHON=python"]
