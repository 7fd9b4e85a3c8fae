"""MovieLens-1M parsing: `::` separators, CRLF line endings, latin-1 titles, years split off.
The archive itself (34 MB) is read only when it is already in var/cache."""

from __future__ import annotations

from pathlib import Path

from training.data import movielens1m
from training.data.importer import movie_item, rating_event


def test_movie_lines_parse_with_their_traps(tmp_path: Path) -> None:
    (tmp_path / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\r\n"
        "2::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi\r\n"
        "3::Untitled::Drama\r\n".encode("latin-1"))
    (tmp_path / "ratings.dat").write_bytes(b"1::2::5::978300760\r\n1::1::3::978300760\r\n")
    data = movielens1m.MovieLens1M(tmp_path)
    toy, city, untitled = data.movies()
    assert (toy.item_id, toy.title, toy.year) == ("1", "Toy Story", 1995)
    assert toy.genres == ("Animation", "Children's", "Comedy")
    assert city.title == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert untitled.year is None and untitled.title == "Untitled"
    assert movie_item(toy).text == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    ratings = list(data.ratings())
    assert [(r.user_id, r.item_id, r.rating, r.timestamp) for r in ratings] == [
        ("1", "2", 5.0, 978300760), ("1", "1", 3.0, 978300760)]  # file order kept
    event = rating_event(ratings[0], "ml-1m")
    assert event.event_id == "ml-1m:1:2" and event.type == "rate" and event.value == 5.0
