"""The item text encoder: offline loading, layer truncation, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.ml.encoder import ENCODER_CONFIG_FILE, ItemTextEncoder, minilm_package_dir
from training.data.sequences import UserSequence
from training.encoder_trainer import EncoderTrainConfig, cooccurrence_pairs, finetune_encoder

TEXTS = ["Toy Story (1995). Genres: Animation, Children's, Comedy.",
         "GoldenEye (1995). Genres: Action, Adventure, Thriller.",
         "Four Rooms (1995). Genres: Thriller.",
         "Get Shorty (1995). Genres: Action, Comedy, Drama."]


@pytest.fixture(scope="module")
def tiny_encoder() -> ItemTextEncoder:
    return ItemTextEncoder.pretrained("cpu", num_layers=1)


def test_package_dir_holds_the_model() -> None:
    assert (minilm_package_dir() / "model.safetensors").is_file()


def test_embeddings_are_unit_norm_and_text_dependent(tiny_encoder: ItemTextEncoder) -> None:
    emb = tiny_encoder.embed(TEXTS, batch_size=3)
    assert emb.shape == (4, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(emb[0], emb[1])
    assert len(tiny_encoder.model.encoder.layer) == 1


def test_embedding_does_not_depend_on_batch_padding(tiny_encoder: ItemTextEncoder) -> None:
    alone = tiny_encoder.embed(TEXTS[2:3])
    padded = tiny_encoder.embed(TEXTS)[2:3]  # padded to the longest text in the batch
    assert torch.allclose(alone, padded, atol=1e-5)


def test_save_and_load_round_trip(tiny_encoder: ItemTextEncoder, tmp_path: Path) -> None:
    tiny_encoder.save(tmp_path)
    assert (tmp_path / ENCODER_CONFIG_FILE).is_file()
    assert (tmp_path / "model.safetensors").is_file()
    loaded = ItemTextEncoder.from_dir(tmp_path, "cpu")
    assert loaded.tokenizer_path == tmp_path
    assert len(loaded.model.encoder.layer) == 1
    assert torch.equal(loaded.embed(TEXTS), tiny_encoder.embed(TEXTS))


def test_cooccurrence_pairs_stay_inside_the_given_sequences() -> None:
    seq = UserSequence("u", np.array([5, 6, 5, 7], dtype=np.int64), np.arange(4.0))
    pairs = {tuple(p) for p in cooccurrence_pairs([seq], window=2).tolist()}
    assert pairs == {(5, 6), (6, 5), (5, 7), (6, 7)}  # (5, 5) two apart is dropped


def test_finetuning_changes_the_encoder() -> None:
    encoder = ItemTextEncoder.pretrained("cpu", num_layers=1)
    before = encoder.embed(TEXTS)
    seqs = [UserSequence("u", np.array([1, 2, 3, 4, 1, 3], dtype=np.int64), np.arange(6.0))]
    config = EncoderTrainConfig(steps=2, batch_pairs=4, learning_rate=1e-3)
    run = finetune_encoder(encoder, TEXTS, seqs, config, torch.device("cpu"), seed=0,
                           progress=False)
    assert len(run.history) == 2 and all(np.isfinite(h["loss"]) for h in run.history)
    assert not torch.allclose(encoder.embed(TEXTS), before)
