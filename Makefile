# DriftRec: `make serve` runs the service, `make test` runs the suite. Both set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What `make serve` sets up: ml-100k (default) or ml-1m (`make serve DATASET=ml-1m`).
DATASET ?= ml-100k
ifeq ($(DATASET),ml-1m)
CONFIG ?= configs/ml1m.yaml
else
CONFIG ?= configs/ml100k.yaml
endif
VARIANT := $(patsubst ml-%,%,$(DATASET))
# `make retrain`: the hyper-parameters a store of a team's own data is retrained with.
RETRAIN_CONFIG ?= configs/default.yaml
WORKERS ?= 1
# Exact versions of every dependency, torch included (`make lock` refreshes both from pyproject):
# LOCK is the service and training (what `make serve` and the image install), DEV_LOCK only
# what the tools add on top of it (pytest, ruff, playwright, Ray, faiss...; `make test`).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# The lock is resolved against the CPU torch wheel (named by its local version, found in
# TORCH_WHEELS: pip finds it there through its own configuration, uv is told), which keeps CUDA
# packages out of it; the lock then says torch==2.13.0, which pip matches with that wheel.
TORCH_WHEELS ?= /opt/wheels
TORCH_CPU ?= torch==2.13.0+cpu
PG_ADMIN_URL ?= postgresql://postgres@127.0.0.1:5432/test

# No model hub is reachable: every model loads from local files.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: venv venv-dev lock lint-imports migrate import-data model retrain bootstrap serve run test lint postgres chromium promtool bench-ingest bench-serve bench-consistency bench-schemathesis bench-train bench-scale bench-import-5m bench-large-catalogue bench-topk bench-peers clean

$(VENV)/.installed: $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Exactly the locked versions (torch==2.13.0: the CPU wheel here, no CUDA packages), then
	# the project itself without resolving anything again.
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The tools on top (both locks in one install: the dev lock pins only what the first lacks).
$(VENV)/.installed-dev: $(VENV)/.installed $(DEV_LOCK)
	$(PY) -m pip install --quiet -r $(LOCK) -r $(DEV_LOCK)
	touch $@

venv: $(VENV)/.installed

venv-dev: $(VENV)/.installed-dev

# Re-resolve the locks after a change to pyproject's dependencies: versions already locked are
# kept where they still fit (uv prefers the pins of the file it writes); `make lock UPGRADE=1`
# moves every package to the newest its range allows. torch stays at 2.13.0, resolved against
# the CPU wheel. LOCK: the service and `train`; DEV_LOCK: `dev` (with ray and ann) constrained
# to LOCK's pins, then cut down to what LOCK lacks. Review the diff, then `make test`.
LOCK_ARGS = --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	$(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS)) $(if $(UPGRADE),--upgrade) \
	--custom-compile-command "make lock" --quiet
lock: venv-dev
	printf '$(TORCH_CPU)\nsetuptools\n' | $(VENV)/bin/uv pip compile pyproject.toml - \
		--extra train $(LOCK_ARGS) -o $(LOCK)
	printf '$(TORCH_CPU)\nsetuptools\n' | $(VENV)/bin/uv pip compile pyproject.toml - \
		--extra train --extra dev --extra ray --extra ann -c $(LOCK) $(LOCK_ARGS) -o $(DEV_LOCK)
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' $(LOCK) $(DEV_LOCK)
	# DEV_LOCK keeps the pins LOCK lacks: a package block (its pin and its "# via" lines) whose
	# pin LOCK holds goes
	awk 'NR == FNR { if ($$0 ~ /^[A-Za-z0-9]/) base[$$0] = 1; next } \
		/^[A-Za-z0-9]/ { skip = ($$0 in base) } !skip' $(LOCK) $(DEV_LOCK) > $(DEV_LOCK).tmp
	mv $(DEV_LOCK).tmp $(DEV_LOCK)
	@! grep -qiE '^(nvidia|triton|cuda)' $(LOCK) $(DEV_LOCK) || { \
		echo "$(LOCK) or $(DEV_LOCK) holds CUDA packages: resolve against the CPU torch wheel" \
			"(TORCH_WHEELS)" >&2; exit 1; }
	@! grep -qiE '^(pytest|ruff|playwright|schemathesis|uv|import-linter|ray|faiss-cpu)==' \
		$(LOCK) || { echo "$(LOCK) holds a dev tool: it belongs in $(DEV_LOCK)" >&2; exit 1; }

migrate: venv
	$(PY) -m app migrate

import-data: migrate
	$(PY) -m training.data import-movielens --variant $(VARIANT) --if-empty

model: venv
	$(PY) -m training ensure-champion --config $(CONFIG)

# Snapshot the store, train, register, and promote when not worse than the champion on the
# same holdout; the running service picks a new champion up through its alias poll.
retrain: venv
	$(PY) -m training retrain --config $(RETRAIN_CONFIG)

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

lint: venv-dev
	$(PY) -m ruff check app training migrations tests bench driftrec_client

# The layer contracts (pyproject's [tool.importlinter], README "Layers").
lint-imports: venv-dev
	$(VENV)/bin/lint-imports

# The browser tests drive Debian's chromium (never a browser downloaded by a test tool).
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# tests/test_deploy.py checks the Prometheus rules with promtool (Debian's prometheus package;
# its service is not started by this target and nothing needs it).
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install \
			-y -q --no-install-recommends prometheus; }

test: venv-dev postgres lint lint-imports chromium promtool
	DRIFTREC_TEST_PG_ADMIN_URL=$(PG_ADMIN_URL) $(PY) -m pytest

bench-ingest: venv-dev postgres
	$(PY) -m bench.ingest

bench-serve: venv-dev postgres
	$(PY) -m bench.serve

bench-consistency: venv-dev
	$(PY) -m bench.consistency

bench-schemathesis: venv-dev postgres
	$(PY) -m bench.schemathesis_run --examples 300

bench-train: venv
	$(PY) -m training train --config $(CONFIG)

# Cost growth with the store (issue 17): ML-1M users replicated SIZES times each into a fresh
# PostgreSQL database; import, drift scan (one process and Ray), a training epoch, serving.
# Needs an ML-1M champion in the registry (REGISTRY: a folder with mlflow.db and artifacts/).
# Long: about 2.5 hours for 1,2,4 on the loaded 2-core machine (about half an hour of CPU);
# `python -m bench.scale --drop` removes the databases and files it made (not the results).
SIZES ?= 1,2,4
bench-scale: venv-dev postgres
	OMP_NUM_THREADS=1 $(PY) -m bench.scale --sizes $(SIZES) $(if $(REGISTRY),--registry $(REGISTRY))

# 5M events from one file through the generic importer, in bounded memory (issue 13).
bench-import-5m: venv-dev postgres
	OMP_NUM_THREADS=1 $(PY) -m bench.import_5m

# One worker over a million-item synthetic catalogue (issue 17): start-up, memory, /recommend
# p50/p99 with the exact scan and with the faiss index (the `ann` extra), the index's recall.
# Needs a champion (`make bootstrap`); about 25 minutes here, most of it writing the rows.
bench-large-catalogue: venv-dev postgres
	$(PY) -m bench.large_catalogue --items 1000000

# Exact top-k against faiss IVF and HNSW on a synthetic 1M x 64 catalogue (issue 17; data
# cached in /tmp, about 10 minutes on the 2-core machine).
bench-topk: venv-dev
	OMP_NUM_THREADS=1 $(PY) -m bench.topk

# Peers side by side (issue 27 item 6): RecTools' EASE and SASRec and implicit's ALS against
# ours, pop and repeat on one store's split (bench/peers.py). The peers live in their own
# virtualenv, PEERS_VENV (bench/requirements-peers.txt, wheels only, about 1.3 GB, a minute to
# install). PEERS_DATASET names the entry of bench/results/peers.json; PEERS_DATABASE_URL is
# that dataset's store (default DRIFTREC_DATABASE_URL); CONFIG the compared run's config
# (basket_holdout, SASRec's window); OURS_JSON that run's quality.json. PEERS_ARGS passes more
# (e.g. --smoke: two grid points and two SASRec epochs, written under var/peers/ instead).
PEERS_VENV ?= .venv-peers
PEERS_DATASET ?= $(DATASET)
PEERS_DATABASE_URL ?=
OURS_JSON ?=
PEERS_ARGS ?=
$(PEERS_VENV)/.installed: bench/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --only-binary=:all: \
		-r bench/requirements-peers.txt
	touch $@

bench-peers: venv $(PEERS_VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m bench.peers run --dataset $(PEERS_DATASET) --config $(CONFIG) \
		--peers-python $(PEERS_VENV)/bin/python \
		$(if $(PEERS_DATABASE_URL),--database-url $(PEERS_DATABASE_URL)) \
		$(if $(OURS_JSON),--ours-json $(OURS_JSON)) $(PEERS_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) var
