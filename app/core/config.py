"""Settings: one typed object, read from ``DRIFTREC_*`` environment variables (or ``.env``).

Bad values fail at start-up, not at the first request that needs them.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VAR_DIR = PROJECT_ROOT / "var"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DRIFTREC_", env_file=".env", extra="ignore")

    # Store: SQLite file is the zero-setup default; PostgreSQL in production
    # (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/driftrec).
    database_url: str = f"sqlite:///{VAR_DIR / 'driftrec.db'}"
    # MLflow keeps its tables in a database of its own: its alembic_version would collide with ours.
    mlflow_tracking_uri: str = f"sqlite:///{VAR_DIR / 'mlflow' / 'mlflow.db'}"
    mlflow_artifact_root: str = str(VAR_DIR / "mlflow" / "artifacts")
    model_name: str = "interest-model"
    model_alias: str = "champion"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_cache_dir: Path = VAR_DIR / "cache"

    # API keys as "key:scope1,scope2" entries separated by ";"; a key may be given as its digest,
    # "sha256=<hex>:scopes" (app/core/security.py). Empty = auth off (then the server binds to
    # 127.0.0.1 only). Scopes: read, write, admin.
    api_keys: str = ""
    # /openapi.json, /docs and /redoc without a key (they hold no data); false: the schema
    # needs a read key and the HTML pages are off.
    public_docs: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Connections (`python -m app serve`): a request (headers and body) must arrive whole this
    # long after the connection opened or the previous response ended, else the connection is
    # closed; an idle keep-alive connection is closed after keep_alive_timeout_seconds; on
    # shutdown requests in flight get graceful_shutdown_seconds to finish.
    request_read_timeout_seconds: float = Field(default=15.0, gt=0)
    keep_alive_timeout_seconds: int = Field(default=5, ge=1)
    graceful_shutdown_seconds: int = Field(default=30, ge=1)

    # Limits on what a request may carry. Id and title lengths are not settings: they are the
    # columns' sizes (app/domain/limits.py), and a wider column needs a migration.
    max_batch_items: int = Field(default=10_000, ge=1)
    max_batch_events: int = Field(default=10_000, ge=1)
    max_text_chars: int = Field(default=20_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_json_field_bytes: int = Field(default=16_384, ge=64)
    max_future_skew_seconds: int = Field(default=86_400, ge=0)
    max_page_size: int = Field(default=1_000, ge=1)

    # PostgreSQL cancels a request's statement after this long (0: no limit).
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)

    # Serving.
    model_poll_seconds: float = Field(default=30.0, ge=0, description="0 turns polling off")
    # Intra-op threads per worker; unset: the usable cores (affinity mask, cgroup quota)
    # split evenly among the `serve --workers` processes (app/core/cpus.py). An explicit
    # number is capped at the usable cores.
    torch_threads: int | None = Field(default=None, ge=1,
                                      description="intra-op threads per worker")
    # Threads a worker runs its (sync) request handlers in (anyio's default is 40); requests
    # beyond that wait their turn in the event loop. The handlers share one GIL per worker, so
    # this bounds how many contend for it; A/B runs on the shared 2-core machine did not
    # separate 4 from 40 (docs/BENCHMARKS.md), so the default stays.
    request_threads: int = Field(default=40, ge=1, le=1_000)
    max_k: int = Field(default=100, ge=1, le=100, description="at most the schema's k <= 100")
    profile_half_life_days: float = Field(default=30.0, gt=0)
    short_term_events: int = Field(default=20, ge=1)
    drift_strength: float = Field(default=1.0, ge=0)
    drift_queue_size: int = Field(default=1_000, ge=1)
    # Per-worker memory bounds (README "Memory per worker"). Remembered rankings: users with
    # one (each holds up to `ranking_cache_variants` rankings of their latest event state, one
    # per set of request options; ~35 KiB each at k=100), and the bytes they may hold in all;
    # 0 turns the cache off, so every /recommend runs the model.
    ranking_cache_size: int = Field(default=20_000, ge=0)
    ranking_cache_mb: int = Field(default=128, ge=0)
    ranking_cache_variants: int = Field(default=4, ge=1)
    # Drift findings: users with one (their latest event state only; ~2-4 KiB each), bytes.
    drift_cache_size: int = Field(default=20_000, ge=0)
    drift_cache_mb: int = Field(default=64, ge=0)
    # Item titles a served version remembers for its responses (read again after any item
    # change; 0: every response reads them from the store). ~(id + title length + 150) bytes.
    title_cache_size: int = Field(default=20_000, ge=0)
    # Users whose change counter the change feed keeps (the least recently changed go first;
    # an evicted user's next /recommend may recompute once). ~(id length + 200) bytes each.
    change_feed_users: int = Field(default=100_000, ge=1)
    # Items the catalogue refresher embeds per batch (in the background, after a commit).
    catalogue_embed_batch: int = Field(default=64, ge=1)
    # Incremental drift state per user (README "Serving performance"): users kept per worker
    # and the MiB they may take (~7 KiB per user at 200 events); 0 turns it off (every drift
    # finding replays the user's window).
    interest_state_users: int = Field(default=20_000, ge=0)
    interest_state_mb: int = Field(default=64, ge=0)
    # Bring a user's state forward in the background after their new events are stored (else
    # the next read does it).
    interest_state_on_ingest: bool = False
    # Events of concurrent requests committed together (app.services.event_intake): one writer
    # thread per worker puts every batch queued while a transaction runs into the next one,
    # and acknowledges each after that commit. Off: each request commits its own batch.
    event_group_commit: bool = False
    # SQLite has no notifications. "process": this process is the only writer, and its own
    # ingestion path tells its change feed (what one worker needs); "data_version": any commit
    # by another connection (another process) makes everything remembered stale (PRAGMA
    # data_version, read per request); "auto": "process", or "data_version" when
    # `serve --workers` starts several.
    sqlite_change_check: Literal["auto", "process", "data_version"] = "auto"
    # Histories per batched forward pass (1: no batching).
    max_inference_batch: int = Field(default=64, ge=1)
    # Top-k over the catalogue (README "Serving performance"). "exact": every ranking scores
    # the whole catalogue. "faiss" (the `ann` extra): an IVF index over the item vectors
    # finds `topk_candidates` rows (plus one per excluded item), which are re-scored exactly
    # and ranked as before; `topk_nprobe` of its lists are scanned per query (more: better
    # recall, slower), with `topk_threads` OpenMP threads per request thread.
    topk_index: Literal["exact", "faiss"] = "exact"
    topk_candidates: int = Field(default=200, ge=1, le=100_000)
    # 512 of ~4,000 lists at 1M items: recall@10 0.999 against the exact scan on a served
    # million-item catalogue, 0.96 at 32 (bench/results/topk_recall_served.json)
    topk_nprobe: int = Field(default=512, ge=1)
    topk_threads: int = Field(default=1, ge=1)

    # Champion and challenger (README "Champion and challenger"). With a share above 0 each
    # worker also loads the version the challenger alias points at and serves it to that
    # share of users, chosen by a keyed hash of the user id with `challenger_salt` (sticky
    # across workers and restarts; a new salt reshuffles who is in the share).
    challenger_share: float = Field(default=0.0, ge=0.0, le=1.0,
                                    description="0 turns the challenger off")
    challenger_alias: str = Field(default="challenger", min_length=1)
    challenger_salt: str = Field(default="driftrec-challenger", min_length=1)
    # Impressions (what each recommendation response showed): kept in a bounded queue per
    # worker and written in batches by a background thread; dropped (and counted) when the
    # queue is full. 0 turns impressions off.
    impression_queue_size: int = Field(default=10_000, ge=0)
    impression_batch_size: int = Field(default=500, ge=1)
    impression_flush_seconds: float = Field(default=1.0, gt=0)
    # Online metrics: an impression is a hit when one of the user's next events, at most
    # this many and within this many seconds of it, is on one of its first k items.
    online_metrics_event_window: int = Field(default=5, ge=1, le=1000)
    online_metrics_time_window_seconds: float = Field(default=86_400.0, gt=0,
                                                      le=366 * 86_400)

    # Drift webhooks (README "Operations"): each drift record a worker commits is POSTed,
    # signed with HMAC-SHA256 under the secret, to this URL by a background sender (bounded
    # backlog, retried; never on the request path). Empty URL: off.
    drift_webhook_url: str = Field(default="", max_length=2000)
    drift_webhook_secret: str = Field(default="", repr=False)
    drift_webhook_queue_size: int = Field(default=1_000, ge=1)
    drift_webhook_attempts: int = Field(default=5, ge=1, le=20)
    drift_webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Online hit rates per role as gauges (for the challenger alert): recomputed from the
    # impressions of the last `online_gauge_window_seconds` this often, while a challenger is
    # enabled (0: never).
    online_gauge_seconds: float = Field(default=300.0, ge=0)
    online_gauge_window_seconds: float = Field(default=86_400.0, gt=0, le=366 * 86_400)
    online_gauge_k: int = Field(default=10, ge=1, le=100)

    # Salt of the digest an erasure's log line carries instead of the user id; empty: the
    # deployment's random salt, created in the store by migration 0003.
    erasure_salt: str = Field(default="", repr=False)

    log_level: str = "INFO"
    # json: one object per line for log shippers; text: for a terminal.
    log_format: Literal["json", "text"] = "json"

    @property
    def model_download_dir(self) -> Path:
        """Where registered model versions are downloaded to (once per version)."""
        return Path(self.mlflow_artifact_root).parent / "downloads"

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("database_url must be a sqlite:// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _faiss_installed(self) -> Settings:
        if self.topk_index == "faiss" and importlib.util.find_spec("faiss") is None:
            raise ValueError("DRIFTREC_TOPK_INDEX=faiss needs faiss, which is not installed: "
                             "pip install 'driftrec[ann]' (faiss-cpu), or set "
                             "DRIFTREC_TOPK_INDEX=exact")
        return self

    @model_validator(mode="after")
    def _signed_webhooks(self) -> Settings:
        # an unsigned drift notification could be forged by anyone who can reach the receiver
        if self.drift_webhook_url and not self.drift_webhook_secret:
            raise ValueError("DRIFTREC_DRIFT_WEBHOOK_URL needs DRIFTREC_DRIFT_WEBHOOK_SECRET")
        if self.drift_webhook_url and not self.drift_webhook_url.startswith(("http://",
                                                                             "https://")):
            raise ValueError("DRIFTREC_DRIFT_WEBHOOK_URL must be an http:// or https:// URL")
        return self

    @model_validator(mode="after")
    def _distinct_aliases(self) -> Settings:
        if self.challenger_alias == self.model_alias:
            raise ValueError("challenger_alias must differ from model_alias")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
