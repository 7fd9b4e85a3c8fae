"""Interest topics: from categories (most distinctive genre) and from clustered embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml.topics import TopicTable, build_topics, kmeans, topics_from_categories


def _clustered_points(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight, far-apart groups of 8 unit vectors in 16-D, and their true group ids."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[[0, 5, 10]] * 10
    truth = np.repeat(np.arange(3), 8)
    points = centres[truth] + rng.normal(scale=0.5, size=(24, 16))
    return points / np.linalg.norm(points, axis=1, keepdims=True), truth


def test_categories_become_topics_and_the_rarest_genre_wins() -> None:
    categories = [("Action", "Sci-Fi"), ("Action",), ("Action", "Drama"), ("Drama",), ()]
    emb = np.eye(5, 4, dtype=np.float32) + 0.1
    table = topics_from_categories(emb, categories)
    assert table.method == "categories"
    assert table.names == ["Action", "Drama", "Sci-Fi", "uncategorised"]
    names = [table.names[t] for t in table.item_topics]
    # Action (3 items) is commoner than Sci-Fi (1) and Drama (2); ties keep the listed order.
    assert names == ["Sci-Fi", "Action", "Drama", "Drama", "uncategorised"]
    assert table.centroids.shape == (4, 4)
    assert np.allclose(np.linalg.norm(table.centroids, axis=1), 1.0, atol=1e-5)


def test_new_item_topic_uses_known_categories_first_then_the_nearest_centroid() -> None:
    emb = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1]], dtype=np.float32)
    table = topics_from_categories(emb, [("Horror",), ("Horror",), ("Comedy",), ("Comedy",)])
    horror, comedy = table.names.index("Horror"), table.names.index("Comedy")
    assert table.assign(None, ["Comedy", "Unheard-of"]) == comedy
    assert table.assign(np.array([0.05, 1.0, 0.0]), ["Unheard-of"]) == comedy
    assert table.assign(np.array([2.0, 0.1, 0.0])) == horror
    with pytest.raises(ValueError, match="needs an embedding"):
        table.assign(None, ["Unheard-of"])


def test_kmeans_recovers_separated_groups_deterministically() -> None:
    points, truth = _clustered_points()
    labels = kmeans(points, 3, seed=1)
    assert np.array_equal(labels, kmeans(points, 3, seed=1))
    # Same partition as the truth, whatever the cluster numbering.
    pairs = {(int(t), int(label)) for t, label in zip(truth, labels, strict=True)}
    assert len(pairs) == 3 and len({label for _, label in pairs}) == 3


def test_uncategorised_catalogue_is_clustered_and_clusters_are_named_from_titles() -> None:
    points, truth = _clustered_points()
    words = ["space robot", "love story", "zombie night"]
    titles = [f"{words[t]} {i}" for i, t in enumerate(truth)]
    table = build_topics(points, [()] * 24, titles, n_clusters=3, seed=0)
    assert table.method == "kmeans"
    assert sorted(table.names) == sorted(f"{a} / {b}" if a < b else f"{b} / {a}"
                                         for a, b in (w.split() for w in words))
    member = points[0] + 0.01
    assert table.names[table.assign(member)] == table.names[table.item_topics[0]]


def test_build_topics_prefers_categories_when_most_items_have_them() -> None:
    points, _ = _clustered_points()
    categories = [("Drama",)] * 20 + [()] * 4
    assert build_topics(points, categories, ["t"] * 24).method == "categories"


def test_json_round_trip_keeps_assignments() -> None:
    points, truth = _clustered_points()
    table = build_topics(points, [()] * 24, [f"w{t} x{t}" for t in truth], n_clusters=3)
    again = TopicTable.from_json(table.to_json(), table.centroids)
    assert again.names == table.names
    assert np.array_equal(again.item_topics, table.item_topics)
    assert again.assign(points[5]) == table.assign(points[5])


def test_assigning_many_items_at_once_equals_assigning_each() -> None:
    points, _ = _clustered_points()
    categories = [("Horror",), ("Comedy",), ("Drama", "Horror")] * 8
    rng = np.random.default_rng(3)
    new = rng.normal(size=(40, points.shape[1])).astype(np.float32)
    new_categories = [(), ("Horror",), ("Unknown",), ("Comedy", "Drama")] * 10
    for table in (topics_from_categories(points, categories),
                  build_topics(points, [()] * 24, [f"t{i}" for i in range(24)],
                               n_clusters=3, seed=0)):
        each = [table.assign(e, c) for e, c in zip(new, new_categories, strict=True)]
        assert table.assign_many(new, new_categories).tolist() == each
        assert len(set(each)) > 1
