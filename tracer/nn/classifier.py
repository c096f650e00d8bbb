"""A sequence-classification head for an encoder (BERT's fine-tuning recipe), and its files.

    logits = W · h₀ + b        h₀: the encoder's final hidden state at position 0

BERT reads the `[CLS]` token there; a tokenizer that adds none leaves the first token, which
an encoder's bidirectional attention also lets see the whole sentence. A new head starts as
BERT's does (weights ~ N(0, 0.02²), bias 0), drawn from a seed.

A model folder may carry a head beside the encoder, which `tracer run` ignores:
`classifier.json` ({"format": "tracer-classifier", "version": 1, "labels": [...], "position": 0})
and `classifier.safetensors` (`W_cls.weight` [labels, d_model], `W_cls.bias` [labels]).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tracer.errors import BadInput
from tracer.nn.hooks import HookPoint

HEAD_CONFIG = "classifier.json"
HEAD_WEIGHTS = "classifier.safetensors"
FORMAT = "tracer-classifier"


class ClassificationHead(nn.Module):
    """Logits over `labels` from the hidden state at position 0; taps `hook_cls`, `hook_class_logits`, `hook_class_probs`."""

    def __init__(self, d_model: int, labels: list[str], seed: int = 0):
        super().__init__()
        self.labels = list(labels)
        self.W_cls = nn.Linear(d_model, len(self.labels))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.W_cls.weight.copy_(torch.randn(self.W_cls.weight.shape, generator=generator) * 0.02)
            self.W_cls.bias.zero_()
        self.hook_cls = HookPoint()      # [d_model]  h₀, what the head reads
        self.hook_class_logits = HookPoint()   # [label]
        self.hook_class_probs = HookPoint()    # [label]    softmax of the logits

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:                          # hidden: (B, T, d)
        cls = self.hook_cls(hidden[:, 0])                                              # (B, d)
        logits = self.hook_class_logits(self.W_cls(cls))                                     # (B, labels)
        self.hook_class_probs(logits.softmax(dim=-1))
        return logits


def encoder_hidden(stack: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """An encoder stack's final hidden states (B, T, d), without its vocabulary (MLM) head."""
    head = stack.head
    stack.head = False  # a Stack without a head returns its hidden states
    try:
        return stack(ids)
    finally:
        stack.head = head


def save_head(head: ClassificationHead, folder: Path) -> None:
    config = {"format": FORMAT, "version": 1, "labels": head.labels, "position": 0}
    (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    state = {key: value.detach().cpu().contiguous() for key, value in head.state_dict().items()}
    save_file(state, str(folder / HEAD_WEIGHTS))


def load_head(folder: Path, d_model: int) -> ClassificationHead | None:
    """The head saved in a model folder, or None when it has none."""
    config_path, weights_path = folder / HEAD_CONFIG, folder / HEAD_WEIGHTS
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{config_path}: not valid JSON ({exc})") from None
    labels = config.get("labels") if isinstance(config, dict) else None
    if not isinstance(config, dict) or config.get("format") != FORMAT or not valid_labels(labels):
        raise BadInput(f"{config_path}: not a classifier head (expected format {FORMAT!r} and two or more distinct labels)")
    head = ClassificationHead(d_model, labels)
    try:
        head.load_state_dict(load_file(str(weights_path)), strict=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise BadInput(f"{weights_path}: does not hold a head for {len(labels)} labels over d_model {d_model} "
                       f"({str(exc).splitlines()[0][:120]})") from None
    return head


def valid_labels(labels) -> bool:
    return (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)
            and len(set(labels)) == len(labels))
