"""Interest topics: one topic per catalogue item, and a rule for new (cold-start) items.

Two ways to get topics, picked by whether the catalogue carries categories:

- **Categories** (ml-100k genres): topics are the categories. An item with several genres gets
  its *most distinctive* one, i.e. the least frequent in the catalogue (ties: the order the item
  lists them). ml-100k lists genres alphabetically, so "first genre" would file every
  "Action Comedy Drama" under Action and half the catalogue under Action/Comedy/Drama; the rarest
  genre says more about what a user is into (Sci-Fi, Film-Noir, ...).
- **Clusters** (no categories): spherical k-means over the L2-normalised item text embeddings;
  each cluster is named after the title words most over-represented in it.

Both keep one centroid per topic (mean embedding of its items) so that a new item without known
categories is assigned to the nearest centroid.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

_WORD = re.compile(r"[a-z][a-z']{2,}")
_STOPWORDS = frozenset(
    "the and for with from that this you your are was his her its our their into out not but "
    "all one two three of in on at to an by le la les de des der die das el los".split()
)


@dataclass
class TopicTable:
    """Topic names, each catalogue item's topic, and what is needed to place new items.

    ``item_topics[i]`` is the topic of catalogue item i (bundle position i, model index i + 1).
    ``centroids``: FloatArray[n_topics, D], L2-normalised mean item embedding of each topic.
    ``category_counts``: catalogue frequency of each category (categories method only).
    """

    method: Literal["categories", "kmeans"]
    names: list[str]
    item_topics: np.ndarray
    centroids: np.ndarray
    category_counts: dict[str, int] = field(default_factory=dict)

    def topic_name(self, topic: int) -> str:
        return self.names[topic]

    def assign(self, embedding: np.ndarray | None, categories: Sequence[str] = ()) -> int:
        """Topic for a new item: its most distinctive known category, else the nearest centroid.

        ``embedding``: FloatArray[D] (the item's text embedding); needed when no category is known.
        """
        known = [c for c in categories if c in self.category_counts]
        if self.method == "categories" and known:
            return self.names.index(_rarest(known, self.category_counts))
        if embedding is None:
            raise ValueError("an item without known categories needs an embedding to get a topic")
        return int(np.argmax(self.centroids @ _unit(np.asarray(embedding, dtype=np.float32))))

    def assign_many(self, embeddings: np.ndarray, categories: Sequence[Sequence[str]]
                    ) -> np.ndarray:
        """int64[n]: `assign` of each row of float32[n, D] with its categories, the centroid
        products taken in one matrix product (a bulk load assigns a million items)."""
        topics = np.empty(len(categories), np.int64)
        nearest: list[int] = []
        for n, item_categories in enumerate(categories):
            known = [c for c in item_categories if c in self.category_counts]
            if self.method == "categories" and known:
                topics[n] = self.names.index(_rarest(known, self.category_counts))
            else:
                nearest.append(n)
        for start in range(0, len(nearest), 65_536):
            rows = nearest[start:start + 65_536]
            topics[rows] = np.argmax(_unit(embeddings[rows]) @ self.centroids.T, axis=1)
        return topics

    def to_json(self) -> dict[str, Any]:
        """Everything but the centroids (saved as an array file by the bundle)."""
        return {
            "method": self.method,
            "names": self.names,
            "item_topics": [int(t) for t in self.item_topics],
            "category_counts": self.category_counts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], centroids: np.ndarray) -> TopicTable:
        return cls(
            method=data["method"],
            names=list(data["names"]),
            item_topics=np.asarray(data["item_topics"], dtype=np.int64),
            centroids=np.asarray(centroids, dtype=np.float32),
            category_counts={str(k): int(v) for k, v in data.get("category_counts", {}).items()},
        )


def build_topics(
    embeddings: np.ndarray,
    categories: Sequence[Sequence[str]],
    titles: Sequence[str],
    n_clusters: int = 20,
    seed: int = 0,
) -> TopicTable:
    """Topics from categories when most items have some, else k-means clusters of ``embeddings``.

    ``embeddings``: FloatArray[N, D], one row per catalogue item (same order as ``categories``).
    """
    with_categories = sum(1 for c in categories if c)
    if with_categories >= 0.5 * max(len(categories), 1):
        return topics_from_categories(embeddings, categories)
    return topics_from_clusters(embeddings, titles, n_clusters, seed)


def topics_from_categories(
    embeddings: np.ndarray, categories: Sequence[Sequence[str]]
) -> TopicTable:
    """One topic per category; items without any category go to an "uncategorised" topic."""
    counts = Counter(c for item in categories for c in dict.fromkeys(item))
    names = sorted(counts)
    if any(not item for item in categories):
        names.append("uncategorised")
    item_topics = np.asarray(
        [names.index(_rarest(item, counts)) if item else len(names) - 1 for item in categories],
        dtype=np.int64,
    )
    centroids = _centroids(_unit(embeddings), item_topics, len(names))
    return TopicTable("categories", names, item_topics, centroids, dict(counts))


def topics_from_clusters(
    embeddings: np.ndarray, titles: Sequence[str], n_clusters: int, seed: int = 0
) -> TopicTable:
    """Spherical k-means topics, each named after its most distinctive title words."""
    unit = _unit(embeddings)
    k = max(1, min(n_clusters, len(unit)))
    item_topics = kmeans(unit, k, seed)
    names = _dedupe([_cluster_label(titles, item_topics, c) for c in range(k)])
    return TopicTable("kmeans", names, item_topics, _centroids(unit, item_topics, k))


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 4,
           iterations: int = 50) -> np.ndarray:
    """Spherical k-means (cosine similarity), k-means++ seeding, best of ``n_init`` starts;
    deterministic for a seed.

    ``points``: FloatArray[N, D], L2-normalised. Returns IntArray[N] of cluster ids in [0, k).
    """
    x = torch.as_tensor(points, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    best, best_fit = None, -float("inf")
    for _ in range(n_init):
        labels, fit = _lloyd(x, _kmeans_pp(x, k, generator), iterations)
        if fit > best_fit:
            best, best_fit = labels, fit
    assert best is not None
    return best.numpy().astype(np.int64)


def _lloyd(x: torch.Tensor, centres: torch.Tensor, iterations: int) -> tuple[torch.Tensor, float]:
    """Lloyd iterations from ``centres`` [k, D]: (labels [N], total similarity to own centre)."""
    labels = torch.full((len(x),), -1, dtype=torch.long)
    for _ in range(iterations):
        new_labels = (x @ centres.T).argmax(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        for c in range(len(centres)):
            members = x[labels == c]
            # An emptied cluster keeps its centre rather than collapsing to NaN.
            if len(members):
                centres[c] = torch.nn.functional.normalize(members.mean(0), dim=0)
    fit = float((x * centres[labels]).sum())
    return labels, fit


def _kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (squared cosine distance): FloatTensor[k, D]."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    for _ in range(1, k):
        distance = (1 - x @ torch.stack(centres).T).min(dim=1).values.clamp_min(0) ** 2
        weights = distance if float(distance.sum()) > 0 else torch.ones(len(x))
        centres.append(x[int(torch.multinomial(weights, 1, generator=generator))])
    return torch.stack(centres).clone()


def _rarest(categories: Sequence[str], counts: Counter[str] | dict[str, int]) -> str:
    """The least frequent category; ``min`` keeps the first on ties (the item's listed order)."""
    return min(categories, key=lambda c: counts.get(c, 0))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _centroids(unit: np.ndarray, item_topics: np.ndarray, n_topics: int) -> np.ndarray:
    """FloatArray[n_topics, D]; a topic with no items gets a zero row (never nearest)."""
    centroids = np.zeros((n_topics, unit.shape[1]), dtype=np.float32)
    for topic in range(n_topics):
        members = unit[item_topics == topic]
        if len(members):
            centroids[topic] = members.mean(axis=0)
    return _unit(centroids)


def _cluster_label(titles: Sequence[str], labels: np.ndarray, cluster: int,
                   n_words: int = 3) -> str:
    """The words whose share of the cluster's titles most exceeds their share of all titles."""
    docs = [set(_WORD.findall(t.lower())) - _STOPWORDS for t in titles]
    overall = Counter(w for d in docs for w in d)
    members = [d for d, label in zip(docs, labels, strict=True) if label == cluster]
    inside = Counter(w for d in members for w in d)
    if not members:
        return f"topic {cluster}"
    lift = {w: n / len(members) - overall[w] / len(docs) for w, n in inside.items() if n >= 2}
    words = sorted(lift, key=lambda w: (-lift[w], w))[:n_words]
    return " / ".join(words) if words else f"topic {cluster}"


def _dedupe(names: list[str]) -> list[str]:
    seen: Counter[str] = Counter()
    result = []
    for name in names:
        seen[name] += 1
        result.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return result
