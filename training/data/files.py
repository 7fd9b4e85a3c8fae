"""A team's own catalogue and events from CSV, JSON Lines or Parquet (chosen by extension).

Column contract (``--map src=dst`` renames a file's columns onto it):

- items: ``item_id``, ``title``, optional ``text``, ``categories`` (``|``-separated in CSV, a
  list in JSON Lines / Parquet), ``attributes`` (a JSON object; JSON text in CSV);
- events: ``user_id``, ``item_id``, ``timestamp`` (ISO-8601, UTC when no offset, or epoch
  seconds), optional ``type`` (default ``interaction``), ``value``, ``text``, ``event_id``.

Files are read row by row (Parquet: in record batches), never whole: a file of millions of
events goes through in bounded memory. Empty CSV cells count as absent. Columns outside the
contract are ignored (and named once on stderr).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.schemas.events import EventIn
from app.schemas.items import ItemIn
from training.data.ingest import FieldError, SourceRow, validated

if TYPE_CHECKING:  # pyarrow is imported where Parquet is read: CSV imports start faster
    import pyarrow as pa

ITEM_COLUMNS = ("item_id", "title", "text", "categories", "attributes")
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "type", "value", "text", "event_id")
REQUIRED = {"items": ("item_id", "title"), "events": ("user_id", "item_id", "timestamp")}
DEFAULT_EVENT_TYPE = "interaction"
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".pq": "parquet"}
PARQUET_BATCH = 10_000


class FileImportError(ValueError):
    """A file that cannot be imported at all: unknown format, unreadable, missing columns."""


def parse_mapping(pairs: list[str] | None) -> dict[str, str]:
    """``["ts=timestamp", "movie=item_id"]`` -> {"ts": "timestamp", "movie": "item_id"}."""
    mapping = {}
    for pair in pairs or []:
        source, sep, target = pair.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise FileImportError(f"--map takes SOURCE=TARGET, got {pair!r}")
        mapping[source.strip()] = target.strip()
    return mapping


@dataclass
class SourceFile:
    path: Path
    kind: str  # "items" or "events"
    mapping: Mapping[str, str]

    @property
    def format(self) -> str:
        try:
            return FORMATS[self.path.suffix.lower()]
        except KeyError:
            raise FileImportError(f"{self.path}: unknown format {self.path.suffix!r}; use "
                                  f"one of {sorted(FORMATS)}") from None

    @property
    def columns(self) -> tuple[str, ...]:
        return ITEM_COLUMNS if self.kind == "items" else EVENT_COLUMNS

    def count(self) -> int | None:
        """Rows in the file, for the progress bar (a fast byte scan; Parquet: metadata)."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        lines = 0
        with self.path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                lines += block.count(b"\n")
        return max(0, lines - (1 if self.format == "csv" else 0))

    def check_columns(self, names: list[str]) -> list[str]:
        """The file's columns after renaming; missing required ones are an error."""
        renamed = [self.mapping.get(name, name) for name in names]
        clash = self.clashes(names)
        if clash:
            raise FileImportError(f"{self.path}: {clash}")
        missing = [c for c in REQUIRED[self.kind] if c not in renamed]
        if missing:
            raise FileImportError(
                f"{self.path}: {self.kind} need column(s) {missing}; the file has {names} "
                "(rename with --map SOURCE=TARGET)")
        return renamed

    def clashes(self, names: Iterable[str]) -> str | None:
        """What is wrong when two of a row's columns would land on one contract column (a
        ``--map u=user_id`` while the file also has ``user_id``): one would silently win."""
        sources: dict[str, list[str]] = {}
        for name in names:
            sources.setdefault(self.mapping.get(name, name), []).append(name)
        doubled = {target: found for target, found in sources.items() if len(found) > 1}
        if not doubled:
            return None
        target, found = next(iter(doubled.items()))
        maps = [f"--map {name}={target}" for name in found if name in self.mapping]
        return (f"column(s) {found} would all become {target!r} ({', '.join(maps)}); drop "
                "the --map, or rename the file's own column away with another --map")

    def ignored(self, renamed: list[str]) -> list[str]:
        return [name for name in renamed if name not in self.columns]

    def rows(self, warn: Any = None) -> Iterator[SourceRow]:
        """Every row, validated with the API schema (model or field errors)."""
        convert = to_item if self.kind == "items" else to_event
        for row in self._raw_rows(warn):
            if not row.errors:
                convert(row, self.format == "csv")
            yield row

    # ----------------------------------------------------------------- readers
    def _raw_rows(self, warn: Any) -> Iterator[SourceRow]:
        reader = {"csv": self._csv, "jsonl": self._jsonl, "parquet": self._parquet}
        try:
            yield from reader[self.format](warn)
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise FileImportError(f"{self.path}: cannot read: {error}") from error

    def _announce(self, renamed: list[str], warn: Any) -> None:
        extra = self.ignored(renamed)
        if extra and warn:
            warn(f"{self.path.name}: ignoring column(s) outside the {self.kind} contract: "
                 f"{extra}")

    def _csv(self, warn: Any) -> Iterator[SourceRow]:
        with self.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise FileImportError(f"{self.path}: empty file (no header)") from None
            names = self.check_columns([h.strip() for h in header])
            self._announce(names, warn)
            line = reader.line_num + 1
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    line = reader.line_num + 1
                    continue
                row = SourceRow(self.path.name, line, {
                    n: (c if c != "" else None) for n, c in zip(names, cells, strict=False)})
                if len(cells) != len(names):
                    row.errors.append(FieldError("row", f"{len(cells)} fields where the "
                                                 f"header has {len(names)}", "csv_fields"))
                line = reader.line_num + 1
                yield row

    def _jsonl(self, warn: Any) -> Iterator[SourceRow]:
        announced = False
        with self.path.open(encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                row = SourceRow(self.path.name, line, text.rstrip("\n"))
                try:
                    values = json.loads(text)
                except json.JSONDecodeError as error:
                    row.errors.append(FieldError("row", f"not JSON: {error.msg} at character "
                                                 f"{error.pos}", "json_invalid"))
                    yield row
                    continue
                except RecursionError:  # deeper than Python's parser goes: a bad row
                    row.errors.append(FieldError("row", "not JSON this importer can read: "
                                                 "it nests too deeply", "json_invalid"))
                    yield row
                    continue
                if not isinstance(values, dict):
                    row.errors.append(FieldError("row", "a line must be a JSON object",
                                                 "json_not_object"))
                    yield row
                    continue
                clash = self.clashes(values)
                if clash:
                    row.errors.append(FieldError("row", clash, "column_clash"))
                    yield row
                    continue
                renamed = {self.mapping.get(k, k): v for k, v in values.items()}
                if not announced:
                    self._announce(list(renamed), warn)
                    announced = True
                row.raw = renamed
                yield row

    def _parquet(self, warn: Any) -> Iterator[SourceRow]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow raises its own types for a bad file
            raise FileImportError(f"{self.path}: not a readable Parquet file: {error}"
                                  ) from error
        names = self.check_columns(list(table.schema_arrow.names))
        self._announce(names, warn)
        utc = _utc_schema(table.schema_arrow)
        number = 0
        for batch in table.iter_batches(batch_size=PARQUET_BATCH):
            if utc is not None:
                batch = batch.cast(utc)
            try:
                rows: list[tuple[dict[str, Any], list[FieldError]]] = [
                    (values, []) for values in batch.to_pylist()]
            except (OverflowError, ValueError, ArithmeticError, pa.ArrowException):
                rows = _parquet_rows_one_by_one(batch)
            for values, errors in rows:
                number += 1
                renamed = {self.mapping.get(k, k): v for k, v in values.items()}
                yield SourceRow(self.path.name, number, renamed,
                                errors=[FieldError(self.mapping.get(e.field, e.field),
                                                   e.message, e.code) for e in errors])


def _utc_schema(schema: pa.Schema) -> pa.Schema | None:
    """The schema with every zoned timestamp column in UTC (the same instants; only the zone
    they are shown in changes), or None when there is nothing to change. Python's datetime
    ends at 9999-12-31 in the column's own zone: 9999-12-31T20:00Z is a valid instant that a
    +14:00 column could not hand over."""
    import pyarrow as pa

    fields = [field.with_type(pa.timestamp(field.type.unit, tz="UTC"))
              if pa.types.is_timestamp(field.type) and field.type.tz not in (None, "UTC")
              else field for field in schema]
    changed = any(new is not old for new, old in zip(fields, schema, strict=True))
    return pa.schema(fields, metadata=schema.metadata) if changed else None


def _parquet_rows_one_by_one(batch: pa.RecordBatch
                             ) -> list[tuple[dict[str, Any], list[FieldError]]]:
    """A record batch holding a value Python cannot represent (a time past year 9999, a
    date before year 1): value by value, so that only its row is refused, naming the
    field."""
    import pyarrow as pa

    rows: list[tuple[dict[str, Any], list[FieldError]]] = []
    columns = list(zip(batch.schema.names, batch.columns, strict=True))
    for index in range(batch.num_rows):
        values: dict[str, Any] = {}
        errors: list[FieldError] = []
        for name, column in columns:
            try:
                values[name] = column[index].as_py()
            except (OverflowError, ValueError, ArithmeticError, pa.ArrowException) as error:
                values[name] = None
                kind = column.type
                if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
                    message = ("timestamp out of range: a time from 1970-01-01 to "
                               "9999-12-31T23:59:59Z in UTC")
                else:
                    message = f"value this importer cannot read ({kind}): {error}"
                errors.append(FieldError(name, message, "parquet_value"))
        rows.append((values, errors))
    return rows


def _present(values: Mapping[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in columns and v is not None}


def to_item(row: SourceRow, from_csv: bool) -> SourceRow:
    values = _present(row.raw, ITEM_COLUMNS)
    categories = values.get("categories")
    if isinstance(categories, str):  # CSV: "Drama|Comedy" (also accepted in JSON Lines)
        values["categories"] = [c.strip() for c in categories.split("|") if c.strip()]
    attributes = values.get("attributes")
    if isinstance(attributes, str):
        try:
            values["attributes"] = json.loads(attributes)
        except json.JSONDecodeError:
            row.errors.append(FieldError("attributes", "attributes must be a JSON object",
                                         "dict_type"))
            return row
        except RecursionError:  # deeper than Python's parser goes
            row.errors.append(FieldError("attributes", "attributes nest too deeply",
                                         "json_invalid"))
            return row
    if from_csv:
        values = {k: v.strip() if k in ("item_id",) and isinstance(v, str) else v
                  for k, v in values.items()}
    return validated(row, ItemIn, values)


def to_event(row: SourceRow, from_csv: bool) -> SourceRow:
    values = _present(row.raw, EVENT_COLUMNS)
    values.setdefault("type", DEFAULT_EVENT_TYPE)
    if from_csv:
        values = {k: v.strip() if k in ("user_id", "item_id", "event_id", "type", "value",
                                        "timestamp") else v for k, v in values.items()}
        if isinstance(values.get("value"), str):  # a CSV cell is text; the schema wants a number
            values["value"] = _number(values["value"])
    return validated(row, EventIn, values)


def _number(text: str) -> float | str:
    """A CSV cell's number; the text itself when it is none (refused by the schema, which
    names the field)."""
    try:
        return float(text)
    except ValueError:
        return text
