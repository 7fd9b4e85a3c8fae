"""One entry point for the recommendation part: fine-tune the encoder, embed the items, train
our sequence model and the ``sasrec_id`` baseline, evaluate them and the most-popular baseline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from app.ml.encoder import ItemTextEncoder
from app.ml.sequence import SequenceInterestModel, SequenceModelConfig
from training import budget
from training.budget import Deadline
from training.data.sequences import (
    ItemVocab,
    LeaveOneOutSplit,
    build_user_sequences,
    build_vocab,
    leave_one_out,
)
from training.data.store import InteractionSnapshot
from training.encoder_trainer import EncoderTrainConfig, finetune_encoder
from training.evaluate import evaluate_model, evaluate_popularity
from training.sequence_trainer import (
    SequenceTrainConfig,
    SequenceTrainResult,
    train_sequence_model,
)


@dataclass
class RecommenderConfig:
    """Every setting of a recommender run (flat, so a YAML file maps key-for-key onto it).

    Defaults are the full ml-100k run; :meth:`tiny` is the seconds-long CPU smoke setting.
    """

    # data
    max_users: int | None = None  # keep only the first N users (by first ingested event)
    basket_holdout: bool = False  # validation/test histories stop before the target's
    # timestamp, so a basket's other items are never history for one of its items (off: the
    # RecBole protocol of the MovieLens figures; see training.data.sequences)
    # text encoder (all-MiniLM-L6-v2) and its contrastive fine-tuning
    encoder_num_layers: int | None = None  # keep the first k transformer layers; None = all 6
    encoder_max_length: int = 64  # tokens per item text (ml-100k texts are ~16)
    encoder_steps: int = 60  # InfoNCE steps on co-consumed training pairs; 0 = frozen encoder
    encoder_batch_pairs: int = 96  # pairs per step (in-batch negatives)
    encoder_window: int = 3  # pair an event with the next `window` training events
    encoder_learning_rate: float = 5e-5
    encoder_temperature: float = 0.05
    # sequence model architecture (see app.ml.sequence.SequenceModelConfig)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    ff_size: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    max_len: int = 50  # training window and inference history length
    use_text: bool = True  # content: projected item text embeddings (ours only)
    use_time: bool = True  # content: log-gap and hour-of-day embeddings (ours only)
    gap_buckets: int = 16
    # relative attention bias (ours only; off by default, see SequenceModelConfig)
    time_bias: str = "off"  # "off", "event" or "request" (query at the target's/request time)
    position_bias: bool = False
    bias_buckets: int = 64
    # optimisation (shared by ours and the sasrec_id baseline)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # training windows per step
    max_epochs: int = 200
    patience: int = 10  # early stopping on validation NDCG@10
    average_top_k: int = 5  # >1: try averaging the k best validation checkpoints (kept only
    # when the average scores better on validation)
    grad_clip: float = 5.0
    shuffle_ties: bool = True  # re-draw the order of same-second training events each epoch
    item_dropout: float = 0.0  # probability of hiding a training input item
    loss_negatives: int = 0  # 0 = full softmax over the catalogue; K = sampled softmax over
    # the target and K uniformly drawn items (a cheaper loss for large catalogues / long windows)
    # speed of the training step only, both off until a measured ablation says otherwise
    # (training.speed): bf16 autocast of the CPU step's forward and loss ("off", "auto": where
    # the CPU has bf16 matrix instructions, "on": required), and torch.compile of its forward
    bf16: str = "off"
    compile: bool = False
    # the served ranker: the model's scores plus buy-again and popularity terms whose weights
    # are fitted on validation (training.blend; the grid holds the model alone)
    repeat_blend: bool = True
    # baselines
    train_baseline: bool = True  # also train sasrec_id (same code, text/time off)
    baseline_max_epochs: int | None = None  # cap sasrec_id's epochs (None: max_epochs)
    # training plan (training.plan): "auto" lets the plan change loss_negatives, batch_size,
    # max_len and learning_rate where the catalogue's size or the memory budget asks for it
    # (each change is printed with its reason); "off" trains with these values as written
    plan: str = "auto"

    @classmethod
    def tiny(cls) -> RecommenderConfig:
        """A few dozen users, one epoch, a 1-layer encoder, windows of 20: seconds on a CPU."""
        return cls(max_users=40, encoder_num_layers=1, encoder_steps=2, encoder_batch_pairs=16,
                   max_len=20, max_epochs=1, patience=1, batch_size=32)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecommenderConfig:
        """Build from a mapping (e.g. parsed YAML); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recommender config keys: {unknown}")
        if isinstance(values.get("bf16"), bool):  # YAML 1.1 reads a bare on/off as a bool
            values = {**values, "bf16": "on" if values["bf16"] else "off"}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_config(self, content: bool = True) -> SequenceModelConfig:
        """Architecture of ours (content=True) or of the sasrec_id baseline (content=False)."""
        return SequenceModelConfig(
            hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
            ff_size=self.ff_size, dropout=self.dropout, attn_dropout=self.attn_dropout,
            max_len=self.max_len, use_text=self.use_text and content,
            use_time=self.use_time and content, gap_buckets=self.gap_buckets,
            time_bias=self.time_bias if content else "off",
            position_bias=self.position_bias and content, bias_buckets=self.bias_buckets)

    def train_config(self) -> SequenceTrainConfig:
        return SequenceTrainConfig(
            learning_rate=self.learning_rate, weight_decay=self.weight_decay,
            batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
            average_top_k=self.average_top_k, grad_clip=self.grad_clip,
            shuffle_ties=self.shuffle_ties, item_dropout=self.item_dropout,
            loss_negatives=self.loss_negatives, bf16=self.bf16, compile=self.compile)

    def baseline_train_config(self) -> SequenceTrainConfig:
        """sasrec_id's optimisation: the same, with ``baseline_max_epochs`` when set."""
        config = self.train_config()
        if self.baseline_max_epochs is not None:
            config.max_epochs = self.baseline_max_epochs
        return config

    def encoder_config(self) -> EncoderTrainConfig:
        return EncoderTrainConfig(
            steps=self.encoder_steps, batch_pairs=self.encoder_batch_pairs,
            window=self.encoder_window, learning_rate=self.encoder_learning_rate,
            temperature=self.encoder_temperature)


@dataclass
class RecommenderResult:
    encoder: ItemTextEncoder  # fine-tuned, eval mode
    model: SequenceInterestModel  # ours, best-validation weights, eval mode
    item_ids: list[str]  # item_ids[i] has index i + 1
    item_text_embeddings: torch.Tensor  # FloatTensor[N + 1, 384], row 0 = zeros (CPU)
    metrics: dict[str, dict[str, dict[str, float]]]  # model -> "val"/"test" -> metric -> value
    history: list[dict[str, Any]] = field(default_factory=list)  # per encoder step / epoch
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    best_epochs: dict[str, int] = field(default_factory=dict)
    averaged: dict[str, bool] = field(default_factory=dict)  # top-k checkpoint average kept?
    baseline: SequenceInterestModel | None = None  # sasrec_id, when trained
    stopped_by_deadline: dict[str, bool] = field(default_factory=dict)  # stage -> cut short
    skipped: list[str] = field(default_factory=list)  # models left out for lack of time
    # model -> the training step's "precision" ("fp32"/"bf16"), "compiled" and "notes" (why)
    speed: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare_split(dataset: InteractionSnapshot, max_users: int | None,
                  basket_holdout: bool = False) -> tuple[ItemVocab, LeaveOneOutSplit]:
    """Vocabulary (full catalogue) and the leave-one-out split of (the first max_users) users."""
    vocab = build_vocab(dataset)
    sequences = build_user_sequences(dataset, vocab)
    if max_users is not None:
        sequences = sequences[:max_users]
    return vocab, leave_one_out(sequences, basket_holdout)


def embed_items(config: RecommenderConfig, dataset: InteractionSnapshot, split: LeaveOneOutSplit,
                device: torch.device, seed: int, progress: bool,
                checkpoint: Path | None = None, log: Callable[[str], None] | None = None,
                deadline: Deadline | None = None
                ) -> tuple[ItemTextEncoder, torch.Tensor, list[dict[str, Any]]]:
    """Fine-tune the encoder on the training parts, then embed every catalogue item.

    Returns (encoder, item text embeddings FloatTensor[N + 1, 384] with row 0 = zeros, the
    encoder's per-step history). With ``checkpoint``, the fine-tuned weights and embeddings are
    saved there, and read back instead of fine-tuning again when they are of the same setting.
    ``deadline``: fine-tuning stops between steps past it (the items are embedded all the same).
    """
    texts = [item.text for item in dataset.items]  # vocabulary order: index i = texts[i - 1]
    encoder = ItemTextEncoder.pretrained(device, config.encoder_num_layers,
                                         config.encoder_max_length)
    setting = {"seed": seed, "encoder": asdict(config.encoder_config()),
               "num_layers": config.encoder_num_layers, "max_length": config.encoder_max_length,
               "texts": len(texts), "users": len(split.train)}
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("setting") == setting:
            encoder.load_state_dict(state["encoder"])
            encoder.to(device).eval()
            if log is not None:
                log(f"encoder: resumed from {checkpoint}")
            return encoder, state["item_text"], state["history"]
    run = finetune_encoder(encoder, texts, split.train, config.encoder_config(), device, seed,
                           progress, deadline)
    if run.stopped_by_deadline and log is not None:
        log(f"encoder: time budget reached after {len(run.history)} of "
            f"{config.encoder_steps} fine-tuning steps")
    item_text = torch.cat([torch.zeros(1, encoder.dim), encoder.embed(texts)])
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        partial = checkpoint.with_name(checkpoint.name + ".partial")
        torch.save({"setting": setting, "encoder": encoder.state_dict(), "item_text": item_text,
                    "history": run.history}, partial)
        os.replace(partial, checkpoint)
    return encoder, item_text, run.history


def train_recommender(config: RecommenderConfig, dataset: InteractionSnapshot, device: torch.device,
                      seed: int, progress: bool = True, checkpoint_dir: Path | None = None,
                      log: Callable[[str], None] | None = None, ray_workers: int = 0,
                      ray_address: str | None = None, deadline: Deadline | None = None
                      ) -> RecommenderResult:
    """Run the whole recommendation pipeline; metrics hold "ours", "sasrec_id" (unless
    ``train_baseline`` is off) and "pop", each with "val" and "test" dicts.

    checkpoint_dir: where the encoder and each sequence model keep their checkpoints (a run
    interrupted there resumes from them; see ``training.sequence_trainer``).
    `ray_workers` > 0: the sequence models train data-parallel on Ray Train
    (training/distributed.py; the `ray` extra), the rest as in one process.
    `deadline`: the run's time budget (training.budget); the encoder, ours and sasrec_id stop
    at their shares of it, and sasrec_id is skipped when less than one of ours's epochs is
    left before its mark. The Ray path trains to the end (its ranks would not stop together).
    """
    start = time.perf_counter()
    vocab, split = prepare_split(dataset, config.max_users, config.basket_holdout)

    def checkpoint(name: str) -> Path | None:
        return None if checkpoint_dir is None else Path(checkpoint_dir) / f"{name}.pt"

    encoder, item_text, history = embed_items(config, dataset, split, device, seed, progress,
                                              checkpoint("encoder"), log,
                                              budget.stage_deadline(deadline, "encoder"))
    history = list(history)
    timings = {"encoder_s": time.perf_counter() - start}
    if log is not None:
        log(f"encoder fine-tuned and items embedded: {timings['encoder_s']:.0f} s")
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    runs: dict[str, SequenceTrainResult] = {}
    skipped: list[str] = []
    for name in ["ours", "sasrec_id"] if config.train_baseline else ["ours"]:
        stage_deadline = budget.stage_deadline(deadline, name)
        if name != "ours" and stage_deadline is not None:
            epoch_s = max((h["seconds"] for h in runs["ours"].history), default=0.0)
            if stage_deadline.remaining() < epoch_s:
                skipped.append(name)
                stage_deadline.record_stop(name)
                if log is not None:
                    log(f"{name}: skipped, {stage_deadline.remaining():.0f} s left of its share "
                        f"of the time budget and an epoch of ours took {epoch_s:.0f} s")
                continue
        stage = time.perf_counter()
        torch.manual_seed(seed)  # same initial weights whatever ran before
        content = name == "ours"  # sasrec_id: the same model with text and time features off
        # Every model reads the same constant table (at a million items 1.5 GB a copy).
        model = SequenceInterestModel(config.model_config(content), vocab.n_items, encoder.dim,
                                      item_text=item_text)
        train_config = config.train_config() if content else config.baseline_train_config()
        if ray_workers > 0:
            from training.distributed import train_sequence_model_ray

            runs[name] = train_sequence_model_ray(model, split, train_config, device,
                                                  seed, progress, name, workers=ray_workers,
                                                  address=ray_address)
        else:
            runs[name] = train_sequence_model(model, split, train_config, device, seed,
                                              progress, name, checkpoint(name), log,
                                              deadline=stage_deadline)
        metrics[name] = evaluate_model(runs[name].model, split, device)
        history.extend(runs[name].history)
        timings[f"{name}_s"] = time.perf_counter() - stage
        timings[f"{name}_epochs"] = len(runs[name].history)
        if log is not None:
            log(f"{name}: {len(runs[name].history)} epochs, best {runs[name].best_epoch}, "
                f"test ndcg@10 {metrics[name]['test']['ndcg@10']:.4f} "
                f"(masked {metrics[name]['test']['ndcg@10_masked']:.4f}), "
                f"{timings[f'{name}_s']:.0f} s")
    metrics["pop"] = evaluate_popularity(split, vocab.n_items)
    timings["total_s"] = time.perf_counter() - start
    return RecommenderResult(
        encoder=encoder, model=runs["ours"].model, item_ids=list(vocab.item_ids),
        item_text_embeddings=item_text, metrics=metrics, history=history, timings=timings,
        best_epochs={name: run.best_epoch for name, run in runs.items()},
        averaged={name: run.averaged for name, run in runs.items()},
        baseline=runs["sasrec_id"].model if "sasrec_id" in runs else None,
        stopped_by_deadline={name: run.stopped_by_deadline for name, run in runs.items()},
        skipped=skipped,
        speed={name: {"precision": run.precision, "compiled": run.compiled,
                      "notes": list(run.speed_notes)} for name, run in runs.items()})


def main() -> None:
    """``python -m training.recommender [--tiny] [--seed S] [--set key=value ...]``: one run on
    the store (``DRIFTREC_DATABASE_URL``), printing metrics, best epochs and timings as JSON
    (for measurements, not registration)."""
    import argparse
    import json

    import yaml

    from app.core.config import get_settings
    from app.ml.device import resolve_device
    from app.store.db import make_engine
    from training.data.store import read_snapshot

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config fields (values parsed as YAML)")
    args = parser.parse_args()
    from training.threads import use_usable_cores

    use_usable_cores()
    config = RecommenderConfig.tiny() if args.tiny else RecommenderConfig()
    overrides = dict(item.split("=", 1) for item in args.set)
    config = RecommenderConfig.from_dict(
        {**config.to_dict(), **{k: yaml.safe_load(v) for k, v in overrides.items()}})
    engine = make_engine(get_settings().database_url)  # the store is the training source
    try:
        snapshot = read_snapshot(engine)
    finally:
        engine.dispose()
    result = train_recommender(config, snapshot, resolve_device(args.device), args.seed,
                               progress=False)
    print(json.dumps({"seed": args.seed, "config": config.to_dict(), "metrics": result.metrics,
                      "best_epochs": result.best_epochs, "averaged": result.averaged,
                      "timings": result.timings, "speed": result.speed}, indent=1))


if __name__ == "__main__":
    main()
