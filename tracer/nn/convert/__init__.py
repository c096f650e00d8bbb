"""Hugging Face checkpoints -> tracer's own instrumented model, one module per family.

`convert(config.json, weights)` reads the folder's config and tensors (never `transformers`) and
returns a `ModelConfig` plus a state dict that fills `build_model(cfg)` exactly, as nanoGPT's
`from_pretrained` does for GPT-2. Every checkpoint key is consumed or on an explicit ignore list,
and every option the converter does not implement is refused by name, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from tracer.errors import BadInput
from tracer.nn.config import ModelConfig

# HF model_type -> the family module that converts it
SUPPORTED: dict[str, str] = {"gpt2": "gpt2", "llama": "llama", "qwen2": "llama", "mistral": "llama", "bert": "bert",
                            "marian": "marian", "t5": "t5"}


@dataclass
class Converted:
    cfg: ModelConfig                       # build_model(cfg) makes the instrumented model
    state_dict: dict[str, torch.Tensor]    # exactly build_model(cfg).state_dict()'s keys and shapes
    notes: dict = field(default_factory=dict)  # model_type, family, head ("lm" | "mlm" | "pooled" | "sentence"),
                                           # special token ids from config.json, ignored keys


def convert(hf_config: dict, weights: Mapping[str, torch.Tensor], extras: dict[str, object] | None = None) -> Converted:
    """Convert a checkpoint; `extras` holds other small JSON files of the folder by relative path
    ("modules.json", "1_Pooling/config.json", "generation_config.json")."""
    if not isinstance(hf_config, dict):
        raise BadInput("config.json: expected a JSON object")
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise BadInput("config.json has no model_type; tracer cannot tell which architecture this is")
    family = SUPPORTED.get(model_type)
    if family is None:
        raise BadInput(f"model_type {model_type!r} is not supported (supported: {', '.join(sorted(SUPPORTED))})")
    if family == "gpt2":
        from tracer.nn.convert import gpt2 as module
    elif family == "llama":
        from tracer.nn.convert import llama as module
    elif family == "marian":
        from tracer.nn.convert import marian as module
    elif family == "t5":
        from tracer.nn.convert import t5 as module
    else:
        from tracer.nn.convert import bert as module
    converted = module.convert(hf_config, weights, extras or {})
    converted.notes = {"model_type": model_type, "family": family, **converted.notes}
    return converted
