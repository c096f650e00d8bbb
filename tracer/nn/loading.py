"""Find and load a model folder: config.json + model.safetensors + tokenizer.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tracer.errors import BadInput
from tracer.nn.config import ModelConfig
from tracer.nn.model import build_model
from tracer.nn.tokenizer import TextTokenizer

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
DEFAULT_MODEL = "de-en-tiny"


def models_dirs() -> list[Path]:
    """Where named models are looked for: $TRACER_MODELS_DIR, then the project's models/."""
    dirs = []
    if os.environ.get("TRACER_MODELS_DIR"):
        dirs.append(Path(os.environ["TRACER_MODELS_DIR"]))
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    return dirs


def available_models() -> list[Path]:
    """Every folder in the model dirs that holds a config.json."""
    found = {}
    for folder in models_dirs():
        if folder.is_dir():
            for child in sorted(folder.iterdir()):
                if (child / "config.json").is_file() and child.name not in found:
                    found[child.name] = child
    return list(found.values())


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A model name (`de-en-tiny`) or a folder path -> the model folder, or a clear BadInput."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
        if not any(p.name == DEFAULT_MODEL for p in available_models()):
            raise BadInput(
                f"no model installed: the default model {DEFAULT_MODEL!r} is not in "
                f"{', '.join(str(d) for d in models_dirs())}; pass --model PATH or run `tracer train {DEFAULT_MODEL}`"
            )
    path = Path(name_or_path).expanduser()
    looks_like_path = os.sep in name_or_path or name_or_path.startswith(".") or path.exists()
    if not looks_like_path:
        for candidate in available_models():
            if candidate.name == name_or_path:
                return candidate
        known = ", ".join(p.name for p in available_models()) or "none installed"
        raise BadInput(f"unknown model {name_or_path!r} (known: {known})")
    if not path.exists():
        raise BadInput(f"model folder {path} does not exist")
    if not path.is_dir():
        raise BadInput(f"--model {path} is a file; it must be a folder holding {', '.join(MODEL_FILES)}")
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise BadInput(f"model folder {path} lacks {', '.join(missing)}")
    return path


def read_config(folder: Path) -> ModelConfig:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{folder / 'config.json'}: not valid JSON ({exc})") from None
    cfg = ModelConfig.from_dict(data)
    if cfg.name == ModelConfig.name:
        cfg.name = folder.name
    return cfg


@dataclass
class LoadedModel:
    """A model ready to trace: its config, weights (in eval mode) and tokenizer."""

    cfg: ModelConfig
    model: nn.Module
    tokenizer: TextTokenizer
    path: Path
    device: torch.device


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def load_model(name_or_path: str | None, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a model folder onto `device`; `dtype` (e.g. "bfloat16") casts the weights, else they stay as stored."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise BadInput(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype.lower()]
    folder = resolve_model(name_or_path)
    cfg = read_config(folder)
    tokenizer = TextTokenizer.from_file(folder / "tokenizer.json", cfg)
    model = build_model(cfg)
    try:
        state = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInput(f"{folder / 'model.safetensors'}: cannot read weights ({str(exc).splitlines()[0][:160]})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:2] or [str(exc)[:160]]
        raise BadInput(f"weights in {folder} do not fit its config.json ({first[0][:200]})") from None
    device = torch.device(device)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(cfg, model, tokenizer, folder, device)


def save_model(model: nn.Module, cfg: ModelConfig, tokenizer_json: str | Path, folder: str | Path) -> Path:
    """Write a model folder (weights as safetensors, never pickle)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    tokenizer_json = Path(tokenizer_json)
    if tokenizer_json.resolve() != (folder / "tokenizer.json").resolve():
        (folder / "tokenizer.json").write_text(tokenizer_json.read_text(encoding="utf-8"), encoding="utf-8")
    return folder
