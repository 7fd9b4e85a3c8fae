"""SQL of the stored item embeddings (table item_embeddings, migration 0005).

Rows are keyed by (encoder_key, item_id) and carry the digest of what they were embedded
from; readers pass the digests they expect and get only rows that still match, so an item
whose text changed after it was embedded is embedded again rather than served stale.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.store.models import Item, ItemEmbedding, utcnow
from app.store.repository import _chunks, _insert

READ_CHUNK = 5_000  # rows per fetch when streaming a key's embeddings


@dataclass(frozen=True)
class StoredVectors:
    """Embeddings found in the store: row i of `vectors` (float32[n, dim]) is `item_ids[i]`."""

    item_ids: list[str]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.item_ids)


def stored_digests(session: Session, encoder_key: str) -> dict[str, bytes]:
    """item_id -> digest of every row of this encoder (what the embedding job compares)."""
    query = select(ItemEmbedding.item_id, ItemEmbedding.digest).where(
        ItemEmbedding.encoder_key == encoder_key)
    rows = session.execute(query, execution_options={"yield_per": READ_CHUNK})
    return {str(item_id): bytes(digest) for item_id, digest in rows}


def read_vectors(session: Session, encoder_key: str, wanted: Mapping[str, bytes]
                 ) -> StoredVectors:
    """The stored embeddings of the `wanted` items (item_id -> expected digest) whose digest
    still matches, streamed into one float32 matrix (no Python object per value)."""
    if not wanted:
        return StoredVectors([], np.zeros((0, 0), np.float32))
    ids: list[str] = []
    matrix: np.ndarray | None = None
    query = select(ItemEmbedding.item_id, ItemEmbedding.digest, ItemEmbedding.dim,
                   ItemEmbedding.vector).where(ItemEmbedding.encoder_key == encoder_key)
    if len(wanted) <= 5 * READ_CHUNK:  # a few items: look them up; else stream the key
        rows: Iterable[tuple[str, bytes, int, bytes]] = _rows_by_id(session, query,
                                                                     sorted(wanted))
    else:
        rows = session.execute(query, execution_options={"yield_per": READ_CHUNK})
    for item_id, digest, dim, vector in rows:
        if wanted.get(item_id) != bytes(digest):
            continue
        if matrix is None:
            matrix = np.empty((len(wanted), int(dim)), np.float32)
        if int(dim) != matrix.shape[1]:
            raise ValueError(f"stored embeddings of {encoder_key} disagree on their width")
        matrix[len(ids)] = np.frombuffer(vector, dtype="<f4", count=int(dim))
        ids.append(str(item_id))
    if matrix is None:
        return StoredVectors([], np.zeros((0, 0), np.float32))
    return StoredVectors(ids, matrix[: len(ids)])


def _rows_by_id(session: Session, query: object, item_ids: Sequence[str]
                ) -> Iterator[tuple[str, bytes, int, bytes]]:
    for chunk in _chunks(item_ids):
        yield from session.execute(query.where(ItemEmbedding.item_id.in_(chunk)))  # type: ignore[attr-defined]


def write_vectors(session: Session, encoder_key: str, item_ids: Sequence[str],
                  digests: Sequence[bytes], vectors: np.ndarray) -> int:
    """Insert or replace these items' embeddings (row i of float32[n, dim] is item_ids[i]).
    Items deleted meanwhile are left out (their rows would have nowhere to point). Returns
    the number of rows written. The caller commits."""
    if not item_ids:
        return 0
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    existing = _existing_items(session, item_ids)
    now = utcnow()
    values = [{"encoder_key": encoder_key, "item_id": item_id, "digest": digest,
               "dim": int(vectors.shape[1]), "vector": vectors[n].tobytes(), "created_at": now}
              for n, (item_id, digest) in enumerate(zip(item_ids, digests, strict=True))
              if item_id in existing]
    if not values:
        return 0
    statement = _insert(session, ItemEmbedding)
    statement = statement.on_conflict_do_update(
        index_elements=[ItemEmbedding.encoder_key, ItemEmbedding.item_id],
        set_={"digest": statement.excluded.digest, "dim": statement.excluded.dim,
              "vector": statement.excluded.vector,
              "created_at": statement.excluded.created_at})
    try:
        with session.begin_nested():
            session.execute(statement, values)
    except IntegrityError:  # an item was deleted between the check and the write: again
        existing = _existing_items(session, [v["item_id"] for v in values])
        values = [v for v in values if v["item_id"] in existing]
        if values:
            session.execute(statement, values)
    return len(values)


def _existing_items(session: Session, item_ids: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(set(item_ids))):
        found.update(session.scalars(select(Item.item_id).where(Item.item_id.in_(chunk))))
    return found


def count_vectors(session: Session, encoder_key: str | None = None) -> int:
    query = select(func.count()).select_from(ItemEmbedding)
    if encoder_key is not None:
        query = query.where(ItemEmbedding.encoder_key == encoder_key)
    return int(session.scalar(query) or 0)


def delete_other_encoders(session: Session, keep: Iterable[str]) -> int:
    """Drop the rows of every encoder not in `keep` (versions no longer served)."""
    result = session.execute(delete(ItemEmbedding).where(
        ItemEmbedding.encoder_key.not_in(list(keep))))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
