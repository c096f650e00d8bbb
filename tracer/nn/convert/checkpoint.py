"""Strict key accounting shared by the converters: every tensor taken once, every parameter filled."""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

from tracer.errors import BadInput
from tracer.nn.config import ModelConfig
from tracer.nn.model import build_model


def need(hf_config: dict, key: str):
    """A config.json value the conversion cannot do without."""
    if key not in hf_config or hf_config[key] is None:
        raise BadInput(f"config.json: missing {key}")
    return hf_config[key]


def choose(hf_config: dict, key: str, default: str, table: dict[str, str]) -> str:
    """A config.json option (absent: `default`) looked up in `table`, tracer's name for each value it
    implements; any other value is refused by name."""
    value = hf_config.get(key, default)
    if value not in table:
        raise BadInput(f"config.json: {key} {value!r} is not supported ({', '.join(table)})")
    return table[value]


def refuse(hf_config: dict, allowed: dict[str, object]) -> None:
    """Options whose other values change the computation in ways tracer does not implement:
    each must be absent or have its allowed value."""
    for key, value in allowed.items():
        if hf_config.get(key, value) != value:
            raise BadInput(f"config.json: {key} = {hf_config[key]!r} is not supported (only {value!r})")


def build_config(**fields) -> ModelConfig:
    return ModelConfig(**fields).validate()


class Checkpoint:
    """A checkpoint's tensors, moved one by one into tracer's state dict.

    `take` fails on a missing key or a wrong shape, `finish` on a key left over (unless it matches
    an `ignore` pattern) or a parameter left unfilled; each error is one line naming the key."""

    def __init__(self, weights: Mapping[str, torch.Tensor], cfg: ModelConfig, ignore: Iterable[str] = ()):
        self.weights = weights
        self.keys = set(weights.keys())
        self.ignore = [re.compile(pattern) for pattern in ignore]
        with torch.device("meta"):  # shapes only: nothing is allocated
            self.expected = {name: tuple(t.shape) for name, t in build_model(cfg).state_dict().items()}
        self.state: dict[str, torch.Tensor] = {}
        self.taken: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.keys

    def first(self, *keys: str) -> str:
        """The first of several spellings present (old BERT files say gamma/beta for weight/bias)."""
        return next((key for key in keys if key in self.keys), keys[0])

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if key not in self.keys:
            raise BadInput(f"checkpoint: missing key {key!r}")
        tensor = self.weights[key]
        if shape is not None and tuple(tensor.shape) != tuple(shape):
            raise BadInput(f"checkpoint: {key} has shape {list(tensor.shape)}, config.json implies {list(shape)}")
        self.taken.add(key)
        return tensor

    def put(self, name: str, tensor: torch.Tensor, source: str) -> None:
        """Fill tracer's parameter `name` from checkpoint key `source` (after any transpose or split)."""
        if name not in self.expected:
            raise BadInput(f"checkpoint: {source} has no place in this model (tracer has no {name})")
        if tuple(tensor.shape) != self.expected[name]:
            raise BadInput(f"checkpoint: {source} has shape {list(tensor.shape)}, the model needs {list(self.expected[name])}")
        self.state[name] = tensor

    def move(self, source: str, name: str) -> None:
        """Copy one tensor across unchanged."""
        self.put(name, self.take(source), source)

    def same_as(self, key: str, other: str) -> None:
        """A tied duplicate (an old file's copy of the tied head): consumed if it equals `other`."""
        if self.has(key):
            if not torch.equal(self.take(key), self.weights[other]):
                raise BadInput(f"checkpoint: {key} differs from {other}, which config.json ties it to")

    def ignored(self) -> list[str]:
        return sorted(key for key in self.keys - self.taken if any(p.fullmatch(key) for p in self.ignore))

    def finish(self) -> dict[str, torch.Tensor]:
        left = sorted(key for key in self.keys - self.taken if not any(p.fullmatch(key) for p in self.ignore))
        if left:
            more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
            raise BadInput(f"checkpoint: unexpected key {left[0]!r}{more}; this converter does not know what it is")
        unfilled = [name for name in self.expected if name not in self.state]
        if unfilled:
            raise BadInput(f"checkpoint: nothing fills {unfilled[0]}")
        return self.state
