"""The cost-growth benchmark's parts (issue 17, bench/scale.py): the ML-1M replicator (id
offsets, counts, order, files the generic importer reads), the power-law fit and its
extrapolation, and the scan's user subset. No benchmark runs here."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.store import scan_source
from bench.curves import fit_power_law, growth
from bench.replicate import replicated, write_events, write_items_csv
from bench.scale import extrapolated_entry, fits, scan_extrapolation
from training.data.files import SourceFile
from training.data.movielens import Movie, Rating

RATINGS = [Rating("1", "10", 5.0, 100), Rating("1", "11", 3.0, 100), Rating("2", "10", 4.0, 90),
           Rating("3", "12", 1.0, 120)]


def test_copies_shift_user_ids_by_the_offset_and_keep_the_source_order() -> None:
    reads = []

    def source() -> list[Rating]:
        reads.append(1)
        return RATINGS

    rows = list(replicated(source, 3, offset=100))
    assert len(rows) == 3 * len(RATINGS)
    assert len(reads) == 3  # the source is re-read per copy, never held whole
    # copy after copy, each in source order (ties at t=100 keep their file order)
    assert [r.user_id for r in rows] == ["1", "1", "2", "3", "101", "101", "102", "103",
                                         "201", "201", "202", "203"]
    assert [(r.item_id, r.rating, r.timestamp) for r in rows[4:8]] == [
        (r.item_id, r.rating, r.timestamp) for r in RATINGS]
    assert len({r.user_id for r in rows}) == 3 * 3


def test_a_user_id_at_the_offset_would_collide_and_is_refused() -> None:
    with pytest.raises(ValueError, match="not below the offset"):
        list(replicated(lambda: [Rating("100", "1", 1.0, 1)], 2, offset=100))
    with pytest.raises(ValueError, match="at least 1"):
        list(replicated(lambda: RATINGS, 0))


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_the_generated_files_pass_the_generic_importers_validation(tmp_path: Path,
                                                                   suffix: str) -> None:
    events = tmp_path / f"events.{suffix}"
    assert write_events(replicated(lambda: RATINGS, 2, offset=1000), events) == 8
    rows = list(SourceFile(events, "events", {}).rows())
    assert [row.errors for row in rows] == [[]] * 8
    models = [row.model for row in rows]
    assert [m.user_id for m in models] == ["1", "1", "2", "3", "1001", "1001", "1002", "1003"]
    assert [m.timestamp.timestamp() for m in models[:4]] == [100, 100, 90, 120]
    assert {m.type for m in models} == {"rate"} and models[3].value == 1.0
    assert all(m.event_id is None for m in models)  # the importer derives ids from content

    items = tmp_path / "items.csv"
    movie = Movie("10", 'Sense, and "Sensibility"', 1995, ("Drama", "Romance"))
    write_items_csv([movie, Movie("11", "Untitled", None, ())], items)
    read = [row.model for row in SourceFile(items, "items", {}).rows()]
    assert read[0].title == movie.title and read[0].categories == ["Drama", "Romance"]
    assert read[0].attributes == {"year": 1995} and read[1].attributes == {}


def test_the_fit_recovers_a_power_law_and_words_its_growth() -> None:
    sizes = [1e6, 2e6, 4e6]
    quadratic = fit_power_law(sizes, [3e-9 * s**2 for s in sizes])
    assert quadratic.exponent == pytest.approx(2.0)
    assert quadratic.coefficient == pytest.approx(3e-9)
    assert quadratic.r2 == pytest.approx(1.0)
    assert quadratic.at(16e6) == pytest.approx(3e-9 * 16e6**2)
    assert growth(quadratic) == "faster than linear"
    linear = fit_power_law(sizes, [5.0, 10.5, 19.8])  # noisy but linear
    assert 0.9 < linear.exponent < 1.1 and growth(linear) == "linear"
    assert 0.95 < linear.r2 < 1.0
    assert growth(fit_power_law(sizes, [40.0, 41.0, 40.5])) == "flat"
    assert growth(fit_power_law(sizes, [10.0, 14.0, 20.0])) == "slower than linear"
    # a cost per unit (per event, a latency) is flat at slope 0, not 1
    assert growth(fit_power_law(sizes, [90.0, 98.0, 102.0]), per_unit=True) == "flat"
    assert growth(fit_power_law(sizes, [90.0, 110.0, 135.0]), per_unit=True) == "rising"
    assert growth(fit_power_law(sizes, [1400.0, 1000.0, 700.0]), per_unit=True) == "falling"


def test_a_fit_needs_two_sizes_and_positive_values() -> None:
    with pytest.raises(ValueError, match="two distinct sizes"):
        fit_power_law([1e6, 1e6], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e6, 2e6], [0.0, 2.0])


def test_unmeasured_sizes_come_from_the_fits_and_say_so() -> None:
    measured = [{"events": 1_000_209 * c, "costs": {"import_s": 80.0 * c,
                                                    "serve_p99_c1_ms": 50.0}}
                for c in (1, 2, 4)]
    laws = fits(measured)
    entry = extrapolated_entry(16, laws)
    assert entry["extrapolated"] is True and entry["events"] == 16 * 1_000_209
    assert entry["costs"]["import_s"] == pytest.approx(16 * 80.0, rel=1e-6)
    assert entry["costs"]["serve_p99_c1_ms"] == pytest.approx(50.0)
    assert "scan_ray_s" not in entry["costs"]  # never measured: nothing to extrapolate


def test_a_sampled_scan_extends_to_every_user_at_its_steady_rate() -> None:
    result = {"stored_users": 6040, "users_sampled": 40, "process_wall_s": 30.0,
              "steady_users_per_s": 20.0}
    assert scan_extrapolation(result) == pytest.approx(30.0 + 6000 / 20.0)


def test_the_scan_query_can_be_limited_to_some_users(factory: sessionmaker[Session]) -> None:
    engine = factory.kw["bind"]
    with factory() as session:
        everyone = set(session.scalars(text(scan_source.users_to_scan_sql(engine))))
        some = set(session.scalars(text(scan_source.users_to_scan_sql(
            engine, user_ids=["u3", "u1", "nobody"]))))
    assert everyone == {"u1", "u2", "u3"}
    assert some == {"u1", "u3"}
