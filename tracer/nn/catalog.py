"""Where tracer's own model folders are found (no torch, so `tracer models` answers at once)."""

from __future__ import annotations

import os
from pathlib import Path


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
