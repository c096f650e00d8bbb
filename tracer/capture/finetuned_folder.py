"""Write what `tracer finetune` trained as a new model folder that `tracer run` loads.

LoRA adapters are merged into the weights (W + (α/r)·B·A), so the folder is a plain model
folder; a classification head is saved beside it (tracer/nn/classifier.py says how), and a
MODEL.md says what was trained on what. A folder tracer ships, or finds by name, is never
written over, and neither is one that is not empty.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

from tracer.capture.finetune import FinetuneResult
from tracer.errors import BadInput, TracerError
from tracer.nn.classifier import save_head
from tracer.nn.loading import models_dirs, save_model
from tracer.nn.lora import merge_lora


def bundled_folders() -> set[Path]:
    """Every model folder tracer finds by name: `--out` never writes over one of them."""
    found = set()
    for folder in models_dirs():
        if folder.is_dir():
            found |= {child.resolve() for child in folder.iterdir() if (child / "config.json").is_file()}
    return found


def check_out_folder(out: str | os.PathLike, source: Path) -> Path:
    folder = Path(out).expanduser()
    resolved = folder.resolve()
    if resolved == source.resolve() or resolved in bundled_folders():
        raise BadInput(f"--out {folder} is a model folder tracer ships or reads by name; choose a new folder")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"--out {folder} already exists and is not an empty folder; choose a new folder")
    return folder


def save_finetuned(result: FinetuneResult, out: str | os.PathLike) -> Path:
    """Write the trained model as a model folder `tracer run` loads (LoRA merged into the weights),
    plus the classification head (classifier.json, classifier.safetensors) and a MODEL.md."""
    loaded = result.loaded
    folder = check_out_folder(out, loaded.path)
    tokenizer = loaded.path / "tokenizer.json"
    if not tokenizer.is_file():
        raise TracerError(f"{loaded.path} has no tokenizer.json to copy into {folder}")
    model = copy.deepcopy(result.model)
    merge_lora(model)
    cfg = dataclasses.replace(loaded.cfg, name=folder.name)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-finetune-", dir=folder.parent))
    except OSError as exc:
        raise TracerError(f"cannot write to {folder.parent}: {exc.strerror or exc}") from None
    try:
        save_model(model, cfg, tokenizer, work)
        if result.head is not None:
            save_head(result.head, work)
        (work / "MODEL.md").write_text(model_card(result, folder.name), encoding="utf-8")
        if folder.exists():
            folder.rmdir()  # empty, checked above
        os.replace(work, folder)
    except OSError as exc:
        raise TracerError(f"cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def model_card(result: FinetuneResult, name: str) -> str:
    request, training = result.request, result.trace.output["training"]
    optimizer = training["optimizer"]
    example = result.trace.input
    target = example["target"]
    taught = f"label {target['label']!r} of {', '.join(target['labels'])}" if "label" in target else repr(target["text"])
    lines = [
        f"# {name}",
        "",
        f"`{result.loaded.cfg.name}` fine-tuned by `tracer finetune` on one example ({training['task']}):",
        f"{example['text']!r} → {taught}.",
        "",
        f"- {request.steps} step(s) of AdamW: lr {optimizer['lr']}, betas {tuple(optimizer['betas'])}, "
        f"eps {optimizer['eps']}, weight decay {optimizer['weight_decay']}; seed {request.seed}.",
        f"- loss on the example: {training['loss_before']:.4f} before, {training['loss_after']:.4f} after.",
    ]
    if training["lora"]:
        lora = training["lora"]
        lines.append(f"- LoRA rank {lora['rank']}, alpha {lora['alpha']} on {', '.join(lora['targets'])}; "
                     "the adapters are merged into the weights (W + (alpha/rank)·B·A).")
    lines += ["", "`config.json`, `model.safetensors` and `tokenizer.json` make this a tracer model folder:",
              f"`tracer run TEXT --model {name}` (or its path) loads it."]
    if result.head is not None:
        lines += ["", "`classifier.json` and `classifier.safetensors` hold the classification head: a linear layer",
                  f"on the final hidden state at position 0 (`W_cls.weight` [{len(result.head.labels)}, d_model],",
                  f"`W_cls.bias`), labels {', '.join(result.head.labels)}. `tracer finetune --model` reads it;",
                  "`tracer run` ignores it and runs the encoder's masked-LM head."]
    return "\n".join(lines) + "\n"
