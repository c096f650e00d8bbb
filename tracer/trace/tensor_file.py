"""A trace's tensors in one safetensors file: writers (all at once, or while the steps are
recorded) and a checked lazy reader.

The file is exactly what `safetensors.numpy.save_file` writes (an 8-byte little-endian header
length, a JSON header padded with spaces to 8 bytes, then the raw little-endian data), so any
safetensors reader opens it. Reading checks the whole header against the trace's metadata
before the first tensor is read, then reads tensors one at a time from the
file it checked, held open (tracer.reading: a regular file, read with pread). No pickle anywhere.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from pathlib import Path

import numpy as np
import orjson

from tracer.errors import DamagedFile, TracerError
from tracer.text import human_size, visible
from tracer.reading import open_regular
from tracer.trace.schema import DTYPES
from tracer.trace.step import Step

# safetensors dtype codes for the dtypes a trace may hold
ST_DTYPES = {"float16": "F16", "float32": "F32", "float64": "F64", "int32": "I32", "int64": "I64", "bool": "BOOL"}
assert set(ST_DTYPES) == DTYPES
MAX_HEADER_BYTES = 100 * 1024**2      # what safetensors itself accepts
MAX_TENSOR_FILE_BYTES = 1024**5       # a bound, not a budget: tensors are read one at a time

_ITEMSIZE = {name: np.dtype(name).itemsize for name in DTYPES}


def _nbytes(shape, dtype: str) -> int:
    return math.prod(shape) * _ITEMSIZE[dtype]


def write_tensors(steps: list[Step], path: Path) -> list[int]:
    """Stream every step's tensor into a safetensors file, one tensor at a time, and fsync it;
    returns where each step's entry ends in the header (see `_header`).

    Written straight from each array's buffer: no second in-memory copy of the whole trace,
    and steps loaded lazily from another session are read, written and dropped one by one.
    """
    header, ends = _header(steps)
    with open(path, "wb", buffering=0) as out:
        _write_all(out, header)
        for step in steps:
            was_loaded = (step._array if step.stored_shape is None else step._rows) is not None
            _write_rows(out, step)
            if not was_loaded:
                step.release()
        os.fsync(out.fileno())
    return ends


def _storable(step: Step) -> str:
    """The step's safetensors dtype code; refused if a session cannot hold its dtype."""
    if step.dtype not in ST_DTYPES:
        raise TracerError(f"step {step.id!r}: dtype {step.dtype} cannot be stored in a session")
    return ST_DTYPES[step.dtype]


def _header(steps: list[Step]) -> tuple[bytes, list[int]]:
    """The file's first bytes: the header's length, then the header (every step's dtype, shape and
    place in the data, in order), padded with spaces to 8 bytes as safetensors does; and where each
    step's entry ends in the header (a session's pass index points there: tracer.trace.session).

    Written entry by entry, the bytes orjson writes for the whole header at once."""
    parts, offset = [], 0
    for step in steps:
        code = _storable(step)
        size = _nbytes(step.rows_shape, step.dtype)  # a KV-cached step stores its new rows only
        entry = {"dtype": code, "shape": list(step.rows_shape), "data_offsets": [offset, offset + size]}
        parts.append(orjson.dumps(step.id) + b":" + orjson.dumps(entry))
        offset += size
    body, ends = joined_json(parts, 1)
    raw = b"{" + body + b"}"
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ends


def joined_json(parts: list[bytes], start: int) -> tuple[bytes, list[int]]:
    """JSON items (or `"key":value` members) joined with commas, as orjson writes a list (an
    object); and where each ends, counted from `start`, the offset of the first."""
    ends, at = [], start
    for number, part in enumerate(parts):
        at += len(part) + (number > 0)  # the comma before every item but the first
        ends.append(at)
    return b",".join(parts), ends


def _write_rows(out, step: Step) -> int:
    """Write what `step` recorded (a KV-cached step: its new rows), little-endian; its size in bytes."""
    try:
        array = step.rows
    except ValueError as exc:
        raise TracerError(str(exc)) from None
    if tuple(array.shape) != tuple(step.rows_shape) or str(array.dtype).lstrip("<>=|") != step.dtype.lstrip("<>=|"):
        raise TracerError(f"step {step.id!r}: its data is {array.dtype}{list(array.shape)}, its metadata says {step.dtype}{list(step.rows_shape)}")
    array = np.ascontiguousarray(array, dtype=np.dtype(step.dtype).newbyteorder("<"))
    if array.size:
        _write_all(out, memoryview(array).cast("B"))
    return array.nbytes


def _write_all(out, data) -> None:
    view = memoryview(data)
    while view:  # a raw write may be partial
        written = out.write(view)
        view = view[written:]


class StreamingTensorWriter:
    """A safetensors file written while its steps are recorded (`tracer run --save`).

    `add` appends each step's rows to a data file beside `path` as soon as they exist and drops
    the step's array (it reads its rows back from that file when asked), so memory holds one pass,
    not the trace. The header comes first in a safetensors file and needs every step, so `finish`
    writes it, then the data after it (copied in the kernel, never through this process's memory):
    the file is byte for byte what write_tensors writes for the same steps.
    """

    def __init__(self, path: Path):
        self.path = path
        self._data_path = path.with_name(path.name + ".data")
        self._data = open(self._data_path, "w+b", buffering=0)
        self._steps: list[Step] = []
        self._size = 0

    def add(self, steps: list[Step]) -> None:
        """Write `steps`' rows after those added before; each step then loads them from the file."""
        for step in steps:
            _storable(step)
            offset = self._size
            self._size += _write_rows(self._data, step)
            step._loader = self._reader(step, offset)
            step.release()
            self._steps.append(step)

    def _reader(self, step: Step, offset: int):
        shape, dtype, data = tuple(step.rows_shape), step.dtype, self._data

        def load() -> np.ndarray:
            array = np.empty(shape, dtype=np.dtype(dtype).newbyteorder("<"))
            if array.size:
                _read_into(data, memoryview(array).cast("B"), offset)
            return array if array.dtype.isnative else array.astype(dtype)

        return load

    def finish(self, steps: list[Step]) -> list[int]:
        """Write the safetensors file for `steps` (those added, in the same order), fsync it, and
        point every step at it (read through TensorFile, which checks the header it reads back);
        returns where each step's entry ends in the header (see `_header`)."""
        if len(steps) != len(self._steps) or any(a is not b for a, b in zip(steps, self._steps)):
            raise TracerError("the trace to save is not the one whose steps were written as they were recorded")
        header, ends = _header(steps)
        with open(self.path, "wb", buffering=0) as out:
            _write_all(out, header)
            _copy_data(self._data, out, self._size)
            os.fsync(out.fileno())
        tensors = TensorFile(self.path, steps)
        for step in steps:
            step._loader = tensors.loader(step)
        self.close()
        return ends

    def close(self) -> None:
        """Close and delete the data file (the finished file, if any, stays)."""
        self._data.close()
        try:
            os.unlink(self._data_path)
        except FileNotFoundError:
            pass


def _copy_data(source, out, size: int) -> None:
    """Append the first `size` bytes of `source` to `out`: copy_file_range (in the kernel, no
    user-space buffer) where the OS has it, else a chunked read and write."""
    done = 0
    copy = getattr(os, "copy_file_range", None)
    while copy is not None and done < size:
        try:
            copied = copy(source.fileno(), out.fileno(), size - done, done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
            break
        if copied == 0:
            raise TracerError(f"{visible(source.name)}: the data file ends early")
        done += copied
    while done < size:
        chunk = os.pread(source.fileno(), min(size - done, 16 * 1024**2), done)
        if not chunk:
            raise TracerError(f"{visible(source.name)}: the data file ends early")
        _write_all(out, chunk)
        done += len(chunk)


class TensorFile:
    """One trace's safetensors file: header checked up front, tensors read one at a time.

    `header_end` (a session's pass index, for replay's first frame): check only the header's
    entries before that byte, those of `steps`, the first passes of a longer trace; `check_all`
    then checks the whole header against every step, before a later step is read."""

    def __init__(self, path: Path, steps: list[Step], header_end: int | None = None):
        self.path = path
        # Held open for as long as the trace lives: tensors are read from this file, the one whose
        # header was checked, even if the session is replaced or deleted meanwhile (never a mix).
        self._file = None
        self._data_start = 0
        self._data_len = 0
        self._raw_header = b""
        self._spans: dict[str, int] = {}
        try:
            self._read_header()
            if header_end is None:
                self._check(self._parsed(self._raw_header), steps)
                self._raw_header = b""  # checked whole: not needed again
            elif not 0 < header_end < len(self._raw_header):
                self._fail("the session's pass index points outside the tensor header")
            else:
                self._check(self._parsed(self._raw_header[:header_end] + b"}"), steps)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def check_all(self, steps: list[Step]) -> None:
        """Check the whole header against `steps`, every step of the trace (those already checked
        first): after it, every step reads from the place the whole header gives it."""
        before = self._spans
        self._spans = {}
        try:
            self._check(self._parsed(self._raw_header), steps)
            for step_id, offset in before.items():
                if self._spans.get(step_id) != offset:
                    self._fail(f"its header gives tensor {step_id!r} twice, at two places")
        except DamagedFile:
            self._spans = before  # the steps already read keep reading what they read
            raise

    def forget_header(self) -> None:
        """The whole header is checked (`check_all`) and the trace complete: its bytes are not needed again."""
        self._raw_header = b""

    def _fail(self, message: str):
        raise DamagedFile(f"{visible(self.path)}: {message}")

    def _read_header(self) -> None:
        """Open the file and read its header's bytes (not parsed yet)."""
        fd, size = open_regular(self.path, MAX_TENSOR_FILE_BYTES, follow_links=False, what="a tensor file")
        self._file = handle = os.fdopen(fd, "rb", buffering=0)
        try:
            if size < 8:
                self._fail(f"truncated ({size} bytes; not even a safetensors header)")
            (header_len,) = struct.unpack("<Q", _read_at(handle, 8, 0))
            if header_len > MAX_HEADER_BYTES:
                self._fail(f"the safetensors header claims {human_size(header_len)}; refusing to read it")
            if 8 + header_len > size:
                self._fail(f"truncated (the header claims {header_len} bytes, the file has {size - 8} after its length)")
            self._raw_header = _read_at(handle, header_len, 8)
        except (OSError, EOFError) as exc:
            raise DamagedFile(f"{visible(self.path)}: cannot read ({exc.strerror or exc})") from None
        self._data_start = 8 + header_len
        self._data_len = size - 8 - header_len

    def _parsed(self, raw: bytes) -> dict:
        try:
            header = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._fail("the safetensors header is not valid JSON")
        if not isinstance(header, dict):
            self._fail("the safetensors header is not an object")
        return header

    def _check(self, header: dict, steps: list[Step]) -> None:
        """Validate the header against the metadata without reading any tensor data."""
        data_len = self._data_len
        expected = {step.id for step in steps}
        extra = set(header) - expected - {"__metadata__"}
        if extra:
            self._fail(f"holds tensor(s) the metadata does not list: {', '.join(sorted(extra)[:3])}")
        plain = _plain_spans(header, steps, data_len)
        if plain is not None:
            self._spans = plain
            return
        spans = []
        for step in steps:
            entry = header.get(step.id)
            if not isinstance(entry, dict):
                self._fail(f"tensor {step.id!r} is missing")
            shape, dtype, offsets = entry.get("shape"), entry.get("dtype"), entry.get("data_offsets")
            if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
                self._fail(f"tensor {step.id!r} has an invalid shape {shape!r}")
            if tuple(shape) != tuple(step.rows_shape):
                self._fail(f"tensor {step.id!r} has shape {shape}, its metadata says {list(step.rows_shape)}")
            if dtype != ST_DTYPES[step.dtype]:
                self._fail(f"tensor {step.id!r} is {dtype!r}, its metadata says {step.dtype}")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                    and 0 <= offsets[0] <= offsets[1]):
                self._fail(f"tensor {step.id!r} has invalid data offsets {offsets!r}")
            need = _nbytes(shape, step.dtype)
            if offsets[1] - offsets[0] != need:
                self._fail(f"tensor {step.id!r} claims {human_size(offsets[1] - offsets[0])} for a {need}-byte tensor")
            if offsets[1] > data_len:
                self._fail(f"truncated: tensor {step.id!r} ({human_size(need)}) ends at byte {offsets[1]}, "
                           f"but the file holds only {data_len} bytes of data")
            spans.append(offsets)
            self._spans[step.id] = offsets[0]
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                self._fail("tensors overlap in the file")

    def loader(self, step: Step):
        step_id, shape, dtype = step.id, tuple(step.rows_shape), step.dtype

        def load() -> np.ndarray:
            array = np.empty(shape, dtype=np.dtype(dtype).newbyteorder("<"))
            try:
                if array.size:
                    _read_into(self._file, memoryview(array).cast("B"), self._data_start + self._spans[step_id])
            except (OSError, EOFError) as exc:
                raise DamagedFile(f"{visible(self.path)}: cannot read tensor {step_id!r} ({_first_line(exc)})") from None
            return array if array.dtype.isnative else array.astype(dtype)

        return load


def _plain_spans(header: dict, steps: list[Step], data_len: int) -> dict[str, int] | None:
    """Each step's offset in the data when the header plainly agrees with the metadata, the
    tensors one after another in step order, as tracer writes them; None at the first doubt (the
    step-by-step check in TensorFile._check then names the problem, or accepts another layout).
    The same checks, made cheap for the ~9,000 steps of a long decode: the metadata's shapes are
    already checked, so a header shape is checked by its types and its equality with them."""
    spans: dict[str, int] = {}
    end_before = 0
    sizes: dict[tuple, int] = {}
    for step in steps:
        entry = header.get(step.id)
        if type(entry) is not dict:
            return None
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        rows_shape = step.shape if step.stored_shape is None else step.stored_shape  # step.rows_shape, inlined
        if type(shape) is not list or type(offsets) is not list or len(offsets) != 2:
            return None
        for n in shape:  # 2 == 2.0 == True: the types first
            if type(n) is not int:
                return None
        if tuple(shape) != rows_shape or entry.get("dtype") != ST_DTYPES[step.dtype]:
            return None
        start, end = offsets
        if type(start) is not int or type(end) is not int or start < end_before or end > data_len:
            return None
        key = (rows_shape, step.dtype)
        need = sizes.get(key)
        if need is None:
            need = sizes[key] = _nbytes(rows_shape, step.dtype)
        if end - start != need:
            return None
        spans[step.id] = start
        end_before = end
    return spans


def _read_at(handle, size: int, offset: int) -> bytes:
    buffer = bytearray(size)
    _read_into(handle, memoryview(buffer), offset)
    return bytes(buffer)


def _read_into(handle, view: memoryview, offset: int) -> None:
    """Fill `view` from the file at `offset` (pread: no shared file position); EOFError if the file
    was cut short after its header was checked."""
    fd = handle.fileno()
    while view:
        got = os.preadv(fd, [view], offset)
        if got == 0:
            raise EOFError("the file ends early: it was cut short after it was opened")
        view, offset = view[got:], offset + got


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
