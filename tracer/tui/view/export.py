"""Export one step's tensor to a file: `.npy` (default), `.csv` or JSON (numpy only, no Textual).

The file is named after the step id (`decoder.0.attn.hook_pattern@2.npy`) and written
atomically (a temp file renamed into place), so a failed write never leaves half a file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import orjson

from tracer.errors import BadInput, TracerError
from tracer.trace import Step
from tracer.trace.atomic import atomic_write

FORMATS = {".npy": "npy", ".csv": "csv", ".json": "json"}
DEFAULT_FORMAT = ".npy"


def default_name(step: Step, suffix: str = DEFAULT_FORMAT) -> str:
    """The file name a step exports to: its id and the format's suffix."""
    return step.id.replace(os.sep, "_") + suffix


def target_path(step: Step, where: str | os.PathLike | None, folder: str | os.PathLike = ".") -> Path:
    """Where to write: `where` as given (a folder gets the default name; a name without a
    known suffix gets `.npy`), or the default name in `folder`."""
    if where is None or not str(where).strip():
        return Path(folder) / default_name(step)
    path = Path(str(where).strip()).expanduser()
    if not path.is_absolute():
        path = Path(folder) / path
    if path.is_dir():
        return path / default_name(step)
    if path.suffix.lower() not in FORMATS:
        path = path.with_name(path.name + DEFAULT_FORMAT)
    return path


def export_step(step: Step, path: str | os.PathLike) -> Path:
    """Write the step's tensor to `path` in the format its suffix names; the path written."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(f"can't export to {path.name}: use .npy, .csv or .json")
    if not path.parent.is_dir():
        raise BadInput(f"can't export to {path}: the folder {path.parent} does not exist")
    data = np.asarray(step.data)
    payload = {"npy": _npy, "csv": _csv, "json": _json}[fmt](step, data)
    try:
        with atomic_write(path) as handle:
            handle.write(payload)
    except OSError as exc:
        raise TracerError(f"can't write {path}: {exc.strerror or exc}") from None
    return path


def _npy(step: Step, data: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, data, allow_pickle=False)
    return buffer.getvalue()


def _csv(step: Step, data: np.ndarray) -> bytes:
    """One row per index of the first axis (the rest flattened), a header naming the axes."""
    table = data.reshape(1, -1) if data.ndim == 0 else data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(-1, 1)
    buffer = io.StringIO()
    buffer.write(f"# {step.id}  axes [{', '.join(step.axes)}]  shape [{', '.join(map(str, step.shape))}]\n")
    fmt = "%d" if data.dtype.kind in "biu" else "%.9g"
    np.savetxt(buffer, table.astype(np.int64) if data.dtype.kind == "b" else table, delimiter=",", fmt=fmt)
    return buffer.getvalue().encode("utf-8")


def _json(step: Step, data: np.ndarray) -> bytes:
    values = data.tolist()
    document = {"id": step.id, "axes": list(step.axes), "shape": list(step.shape), "dtype": step.dtype,
                "labels": step.labels, "data": values}
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)  # non-finite numbers become null
