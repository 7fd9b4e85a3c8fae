# DriftRec: `make serve` runs the service, `make test` runs the suite. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/ml100k.yaml
WORKERS ?= 1
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/test

# No model hub is reachable: every model loads from local files.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv migrate import-data model bootstrap serve run test lint postgres chromium bench-ingest bench-serve bench-consistency bench-schemathesis bench-train clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel here; a plain `torch` would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

migrate: venv
	$(PY) -m app migrate

import-data: migrate
	$(PY) -m training.data import-movielens --if-empty

model: venv
	$(PY) -m training ensure-champion --config $(CONFIG)

# Everything `serve` needs before the first request: schema, data, a champion model, and a
# drift check of every imported user (a backfill at each user's last event time) so the
# dashboard has history; users already checked are skipped, so a second run is quick.
bootstrap: import-data model
	$(PY) -m app drift-scan --unchecked-only

serve: bootstrap run

run: venv
	$(PY) -m app serve --workers $(WORKERS)

postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 1; done; \
		echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1

lint: venv
	$(PY) -m ruff check app training migrations tests bench

# The browser tests drive Debian's chromium (never a browser downloaded by a test tool).
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

test: venv postgres lint chromium
	DRIFTREC_TEST_PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) -m pytest

bench-ingest: venv postgres
	$(PY) -m bench.ingest

bench-serve: venv postgres
	$(PY) -m bench.serve

bench-consistency: venv
	$(PY) -m bench.consistency

bench-schemathesis: venv postgres
	$(PY) -m bench.schemathesis_run --examples 300

bench-train: venv
	$(PY) -m training train --config $(CONFIG)

clean:
	rm -rf $(VENV) var
