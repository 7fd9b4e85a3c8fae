#!/bin/bash
# MovieLens-1M import into PostgreSQL, three times, each into a fresh database (the figure
# behind "repeat_quiet_machine" in bench/results/import_ml1m.json). The archive is fetched
# first and not timed. Needs the venv (make venv) and PostgreSQL at 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1
$PY -c "from app.core.config import get_settings; from training.data import movielens1m as m; m.fetch(get_settings().data_cache_dir)"
for run in 1 2 3; do
  db=driftrec_import_repeat$run
  dropdb -h 127.0.0.1 -U postgres --if-exists "$db"
  createdb -h 127.0.0.1 -U postgres "$db"
  url=postgresql+psycopg://postgres@127.0.0.1:5432/$db
  DRIFTREC_DATABASE_URL=$url $PY -m app migrate > /dev/null
  echo "run $run: $(uptime)"
  DRIFTREC_DATABASE_URL=$url /usr/bin/time -f "run $run: %e s wall, %U s user, %M KiB peak" \
    $PY -m training.data import-movielens --variant 1m --no-progress | tail -1
  dropdb -h 127.0.0.1 -U postgres "$db"
done
