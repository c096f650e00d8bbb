"""Find and load a model: a bundled name, a folder (tracer's own or a Hugging Face one), or a hub name.

tracer's own folders hold config.json (with `arch`) + model.safetensors + tokenizer.json. A Hugging
Face folder (config.json with `model_type`; see hf_folder.py) or a hub name (`ORG/NAME`, resolved
through the local hub cache; see hub.py) is converted into the same instrumented model by
`tracer.nn.convert` and loaded with every weight accounted for.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from tracer.errors import BadInput, TracerError
from tracer.nn.catalog import available_models, models_dirs  # noqa: F401  (also imported from here)
from tracer.nn.config import ModelConfig
from tracer.nn.model import build_model
from tracer.nn.tokenizer import TextTokenizer

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
DEFAULT_MODEL = "de-en-tiny"


@dataclass
class ModelSource:
    """Where a model comes from: what the trace header's `model.source` records."""

    kind: str                    # "bundled" (a name in the model dirs), "folder" (a path) or "hub" (ORG/NAME)
    path: Path                   # the folder (for a hub name, the snapshot in the cache)
    model_type: str | None = None  # a Hugging Face folder's model_type; None for tracer's own folders
    hub: str | None = None       # ORG/NAME
    revision: str | None = None  # as asked for (default "main")
    commit: str | None = None    # the cached snapshot's commit

    def to_dict(self, **weights) -> dict:
        """The record, with what was learnt from the weights (`digest`, `weights_dtype`, the converter's `notes`)."""
        record = {"source": self.kind, "path": str(self.path), "model_type": self.model_type or "tracer"}
        if self.kind == "hub":
            record.update(hub=self.hub, revision=self.revision, commit=self.commit)
        record.update(weights)
        return record


def resolve_model(name_or_path: str | os.PathLike | None) -> Path:
    """A model name (`de-en-tiny`), a folder path or a hub name -> the model folder, or a clear BadInput."""
    return locate_model(name_or_path).path


def locate_model(name_or_path: str | os.PathLike | None) -> ModelSource:
    """Like resolve_model, saying also what kind of source it is (see ModelSource)."""
    from tracer.nn import hub
    from tracer.nn.hf_folder import hf_model_type, pickle_only_message

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
                return ModelSource("bundled", candidate)
        parsed = hub.parse_hub_name(name_or_path)
        if parsed is not None and hub.cached_snapshot(*parsed) is not None:
            return hub_source(name_or_path)  # an org-less hub name (`gpt2`) that is in the cache
        known = ", ".join(p.name for p in available_models()) or "none installed"
        raise BadInput(f"unknown model {name_or_path!r} (known: {known})")
    if not path.exists():
        if "/" in name_or_path and hub.parse_hub_name(name_or_path):
            return hub_source(name_or_path)
        raise BadInput(f"model folder {path} does not exist")
    if not path.is_dir():
        raise BadInput(f"--model {path} is a file; it must be a folder holding {', '.join(MODEL_FILES)}")
    refuse_special_files(path)
    model_type = hf_model_type(path)
    if model_type is not None:
        return ModelSource("folder", path, model_type)
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if "model.safetensors" in missing and (refusal := pickle_only_message(path, sorted(os.listdir(path)))):
        raise BadInput(refusal)
    if missing:
        raise BadInput(f"model folder {path} lacks {', '.join(missing)}")
    return ModelSource("folder", path)


# the kinds of file a model folder's loader opens (weights, configs, tokenizers, chat templates, vocabularies)
OPENED_SUFFIXES = (".json", ".safetensors", ".model", ".spm", ".jinja", ".txt")


def refuse_special_files(folder: Path) -> None:
    """A FIFO or device among the files a model folder's loader opens (top level and one folder down,
    where sentence-transformers keeps its modules) is refused by name before anything opens it: the
    tokenizer and safetensors libraries would block on a FIFO for ever. (A pickle file is never
    opened; it is refused by name elsewhere.)"""
    from tracer.reading import special_kind

    entries = [*folder.iterdir(), *(child for sub in folder.iterdir() if sub.is_dir() for child in sub.iterdir())]
    for path in sorted(entries):
        kind = special_kind(path) if path.suffix in OPENED_SUFFIXES else None
        if kind is not None:
            raise BadInput(f"{path}: is {kind}, not a regular file; a model folder holds plain files")


def hub_source(name: str) -> ModelSource:
    from tracer.nn import hub
    from tracer.nn.hf_folder import hf_model_type

    snapshot = hub.resolve_hub_name(name)
    refuse_special_files(snapshot.path)
    return ModelSource("hub", snapshot.path, hf_model_type(snapshot.path), snapshot.repo_id, snapshot.revision,
                       snapshot.commit)


def read_config(folder: Path) -> ModelConfig:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad UTF-8, bad JSON, an integer of thousands of digits
        raise BadInput(f"{folder / 'config.json'}: not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise BadInput(f"{folder / 'config.json'}: nested too deep to be a model's config") from None
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
    source: dict = field(default_factory=dict)  # provenance for the trace header (ModelSource.to_dict)


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def load_model(name_or_path: str | None, device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a model onto `device`. The weights are float32 unless `dtype` (e.g. "bfloat16") says otherwise,
    whatever the checkpoint stores: a bf16/fp16 checkpoint loads in float32 by default."""
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            raise BadInput(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype.lower()]
    source = locate_model(name_or_path)
    folder = source.path
    if source.model_type is not None:
        cfg, model, tokenizer, weights_record = load_hf_model(source)
    else:
        cfg = read_config(folder)
        tokenizer = TextTokenizer.from_file(folder / "tokenizer.json", cfg)
        model = build_model(cfg)
        try:
            state = load_file(str(folder / "model.safetensors"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadInput(f"{folder / 'model.safetensors'}: cannot read weights ({str(exc).splitlines()[0][:160]})") from None
        load_weights(model, state, folder)
        from tracer.nn.hf_folder import file_sha256

        weights_record = {"digest": f"sha256:{file_sha256(folder / 'model.safetensors')}", "weights_dtype": stored_dtype(state)}
    device = torch.device(device)
    model.to(device=device, dtype=dtype).eval()
    return LoadedModel(cfg, model, tokenizer, folder, device, source.to_dict(**weights_record))


def stored_dtype(state: dict[str, torch.Tensor]) -> str | None:
    """The dtype most of a checkpoint's floating-point weights are stored in ("bfloat16", "float32", …)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return str(max(counts, key=counts.get)).removeprefix("torch.") if counts else None


def load_weights(model: nn.Module, state: dict, folder: Path) -> None:
    """Strict load: every parameter filled, no key left over, shapes equal; else one BadInput line."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = [line.strip() for line in str(exc).splitlines() if line.strip()][1:2] or [str(exc)[:160]]
        raise BadInput(f"weights in {folder} do not fit its config.json ({first[0][:200]})") from None


def load_hf_model(source: ModelSource) -> tuple[ModelConfig, nn.Module, TextTokenizer, dict]:
    """A Hugging Face folder -> tracer's instrumented model (float32), its tokenizer, and what the trace
    header records of its weights (digest, stored dtype, the converter's notes)."""
    from tracer.nn.hf_folder import read_hf_folder
    from tracer.nn.tokenizer import HFTokenizer, MarianSPTokenizer

    folder = read_hf_folder(source.path)
    weights = folder.load_weights()
    record = {"digest": folder.weights_digest(), "weights_dtype": stored_dtype(weights)}
    try:
        from tracer.nn.convert import convert
    except ModuleNotFoundError as exc:
        if exc.name != "tracer.nn.convert":
            raise
        raise TracerError(f"{source.path} is a Hugging Face model ({folder.model_type}), "
                          f"but this tracer has no converters (tracer.nn.convert)") from None
    converted = convert(folder.config, weights, folder.extras)
    cfg = converted.cfg
    if cfg.name == ModelConfig.name:
        cfg.name = source.hub or source.path.name
    cfg.validate()  # every field's type and range, and the memory estimate, before anything is built
    model = build_model(cfg)
    load_weights(model, converted.state_dict, source.path)
    record["notes"] = dict(converted.notes)
    if folder.sentencepiece:
        return cfg, model, MarianSPTokenizer(folder, cfg.vocab_size, cfg.decoder_vocab_size), record
    return cfg, model, HFTokenizer.from_folder(folder, cfg.vocab_size), record


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
