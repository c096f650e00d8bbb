"""Sessions: traces plus UI state saved in a folder, replayable without the model (numpy only).

A session folder::

    NAME/
      session.json              manifest: format, version, name, created/updated, traces, ui state
      trace-0.meta.json         trace header and every step's metadata (no tensor data)
      trace-0.safetensors       the tensors, one per step, keyed by step id
      trace-1.meta.json …       one pair per trace

Saving writes the whole folder into a hidden temp folder beside the target, fsyncs every
file and the folder, then renames it into place. Replacing (`force`) swaps the two folders
atomically where the OS can (Linux `renameat2(RENAME_EXCHANGE)`), else renames the old one
aside first, puts the new one in, and deletes the old; a writer killed between those two
renames leaves the old session aside, and the next use of the store puts it back. So a
crash never leaves a half-written session listed and never damages the one that was there.
(The file-system steps themselves are in tracer.trace.atomic; tracer.trace.session_writer writes
a session the same way while its trace is being recorded.)

Loading checks everything before the first tensor is read (the manifest; the metadata, with the
checks the JSON reader uses, tracer.trace.schema; each safetensors header against that
metadata), then reads tensors lazily, one at a time (tracer.trace.tensor_file). A damaged or
hostile session is refused with a DamagedFile that names the problem. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import orjson

from tracer import __version__
from tracer.collector import collector_paused
from tracer.errors import BadInput, DamagedFile, TracerError
from tracer.trace.atomic import (
    atomic_write, fsync_dir, fsync_file, hidden_name, make_hidden_folder, pid_alive, remove_dead_temps, rmtree,
)
from tracer.reading import read_regular
from tracer.trace.schema import (
    DTYPES, INT64_MAX, MAX_ELEMENTS, MAX_ID_CHARS, MAX_LAYER, MAX_RANK, check_nesting, usable_labels, usable_stats,
    validate_cached, validate_consistency, validate_extra, validate_header, validate_meta, validate_trace,
)
from tracer.trace.state import UIState
from tracer.trace.step import META_KEYS, Step, full_shape, parse_name, split_step_id
from tracer.trace.tensor_file import TensorFile, joined_json, write_tensors
from tracer.trace.trace import Later, LaterPass, Trace, check_steps, utc_now

# Called through these module names (not `atomic.exchange`) so that the crash tests can stand in
# for a kernel without RENAME_EXCHANGE and for a full disk by replacing them here.
from tracer.trace.atomic import exchange as _exchange, write_json as _write_json

FORMAT = "tracer-session"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 2: KV-cached steps (`cached`) and the trace's `capture`; 1 reads as 2 without them
TRACE_META_FORMAT = "tracer-session-trace"
MANIFEST = "session.json"
ENV_DIR = "TRACER_SESSIONS_DIR"
DEFAULT_DIR = "sessions"

MAX_META_BYTES = 512 * 1024**2        # a metadata JSON larger than this is not a trace
_MAX_INDEX = 2**31 - 1                # a head or cell index beyond this is not one the UI can show
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\Z")  # \Z: `$` would let a trailing newline through
_FILE = re.compile(r"^trace-\d{1,6}\.(meta\.json|safetensors)$")
# hidden work folders beside a session: .NAME.tmp-PID-xxxx (being written),
# .NAME.old-PID-xxxx (the replaced session, about to be deleted), .NAME.rm-PID-xxxx (being removed)
_WORK = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|rm)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _work_prefix(name: str, kind: str) -> str:
    """The start of a hidden work folder's name for session `name`, as `_WORK` reads it back."""
    return f".{name}.{kind}-{os.getpid()}-"


def sessions_root(root: str | os.PathLike | None = None) -> Path:
    """The sessions folder: `root`, else $TRACER_SESSIONS_DIR, else ./sessions."""
    if root is None:
        root = os.environ.get(ENV_DIR) or DEFAULT_DIR
    return Path(root).expanduser()


def validate_name(name: str) -> str:
    """A session name is a plain folder name: letters, digits, `.`, `_`, `-`, `+`; no `..`."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise BadInput(
            f"invalid session name {name!r}: use letters, digits, '.', '_', '-' or '+' "
            "(starting with a letter or digit, at most 128 characters, no '..' or path separators)"
        )
    return name


@dataclass
class Session:
    """A loaded session: its traces (tensors still on disk), the UI state, and where it lives."""

    name: str
    path: Path
    traces: list[Trace]
    state: UIState
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def trace(self) -> Trace:
        """The trace the user was looking at when the session was saved."""
        return self.traces[self.state.trace]


@dataclass
class SessionInfo:
    """One row of `tracer sessions`: read from the manifest alone (no tensors are opened)."""

    name: str
    path: Path
    created: str | None = None
    updated: str | None = None
    model: str | None = None
    input: str | None = None
    output: str | None = None
    steps: int | None = None
    traces: int | None = None
    size: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "path": str(self.path), "created": self.created, "updated": self.updated,
            "model": self.model, "input": self.input, "output": self.output, "steps": self.steps,
            "traces": self.traces, "size": self.size, "error": self.error,
        }


# -- writing ---------------------------------------------------------------------------
def _step_meta(step: Step, label_sets: dict) -> dict:
    """A step's metadata without its data; stats only when already computed (no tensor reads).

    Token labels repeat across thousands of steps, so each distinct list is stored once in
    the trace's `label_sets` and a step's `labels` maps each axis to an index into it.
    """
    labels = {axis: label_sets.setdefault(tuple(tokens), len(label_sets)) for axis, tokens in step.labels.items()}
    meta = {
        "index": step.index, "id": step.id, "shape": list(step.rows_shape), "dtype": step.dtype,
        "axes": list(step.axes), "labels": labels,
    }
    if step._stats is not None:
        meta["stats"] = step._stats
    if step.cached:
        meta["cached"] = step.cached
    meta.update(step.extra)
    return meta


def refuse_saving(message: str):
    """How a save refuses a trace its own reader would refuse (validate_trace's `fail`)."""
    raise TracerError(f"not saving a trace its reader would refuse: {message}")


def write_session_folder(folder: Path, name: str, traces: list[Trace], state: UIState, created: str | None = None) -> dict:
    """Write a complete session into `folder` (which must exist and be empty); returns the manifest."""
    entries = []
    for number, trace in enumerate(traces):
        validate_trace(trace, refuse_saving)
        header_ends = write_tensors(trace.steps, folder / tensors_name(number))
        entries.append(write_trace_meta(folder, number, trace, header_ends))
    return write_manifest(folder, name, entries, state, created)


def tensors_name(number: int) -> str:
    """The file of trace `number`'s tensors in a session folder."""
    return f"trace-{number}.safetensors"


def write_trace_meta(folder: Path, number: int, trace: Trace, header_ends: list[int] | None = None) -> dict:
    """Write trace `number`'s metadata (its tensors are in `tensors_name(number)`); its manifest entry.

    `header_ends`: where each step's entry ends in the tensors' header (what write_tensors returns);
    with them, the entry of a trace of several passes carries its pass index (`passes`)."""
    tensors, meta = tensors_name(number), f"trace-{number}.meta.json"
    label_sets: dict[tuple, int] = {}
    steps = [_step_meta(step, label_sets) for step in trace.steps]
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS  # as atomic.write_json writes it
    # Written step by step: the bytes orjson writes for the whole document, and where each step ends
    head = orjson.dumps({
        "format": TRACE_META_FORMAT, "version": VERSION, "tensors": tensors,
        "label_sets": [list(tokens) for tokens in label_sets], "trace": dict(trace.header(), steps=[]),
    }, option=option)
    assert head.endswith(b"[" + _STEPS_TAIL), "the steps must close the document"
    body, ends = joined_json([orjson.dumps(item, option=option) for item in steps], len(head) - len(_STEPS_TAIL))
    with open(folder / meta, "wb") as out:
        out.write(head[:-len(_STEPS_TAIL)] + body + _STEPS_TAIL)
        fsync_file(out)
    entry = {
        "meta": meta, "tensors": tensors, "steps": len(trace),
        "model": trace.model.get("name"), "arch": trace.arch, "created": trace.created,
        "input": trace.input.get("text"), "output": trace.output.get("text"),
    }
    if header_ends is not None and len(header_ends) == len(steps):
        passes = _pass_index(trace.steps, ends, header_ends)
        if len(passes) > 1:
            entry["passes"] = passes
    return entry


_STEPS_TAIL = b"]}}"  # what follows the last step in a trace's metadata: steps, trace and document closed


def _pass_index(steps: list[Step], meta_ends: list[int], header_ends: list[int]) -> list[dict]:
    """One entry per pass (`_runs`), with where it ends in the metadata and in the tensors' header:
    a reader that wants the first passes only parses the files up to there (`_read_first_passes`)."""
    return [dict(run, meta=meta_ends[run["steps"] - 1], tensors=header_ends[run["steps"] - 1]) for run in _runs(steps)]


def _runs(steps: list[Step]) -> list[dict]:
    """Each pass, a run of steps of one decoding step: its decoding step, the token it chose (its
    probs step's `chosen`, None if none) and the number of steps up to its end."""
    runs: list[dict] = []
    for count, step in enumerate(steps, 1):
        t = step.decode_step
        if not runs or runs[-1]["decode_step"] != t:
            runs.append({"decode_step": t, "chosen": None})
        chosen = step.extra.get("chosen") if step.extra and step.kind == "probs" else None
        if runs[-1]["chosen"] is None and type(chosen) is dict and type(chosen.get("token")) is str:
            runs[-1]["chosen"] = chosen["token"]
        runs[-1]["steps"] = count
    return runs


_RUN_KEYS = ("steps", "decode_step", "chosen")  # what the pass index says of a pass, and `_runs` works out
_PASS_KEYS = frozenset(_RUN_KEYS + ("meta", "tensors"))  # an index entry's keys


def _same_runs(passes: list[dict], steps: list[Step]) -> bool:
    return [tuple(p[k] for k in _RUN_KEYS) for p in passes] == [tuple(r[k] for k in _RUN_KEYS) for r in _runs(steps)]


def write_manifest(folder: Path, name: str, entries: list[dict], state: UIState, created: str | None = None) -> dict:
    """Write session.json last (a folder without it is not a session) and fsync the folder."""
    now = utc_now()
    manifest = {
        "format": FORMAT, "version": VERSION, "tracer_version": __version__, "name": name,
        "created": created or now, "updated": now, "traces": entries, "ui": state.to_dict(),
    }
    _write_json(folder / MANIFEST, manifest, indent=True)
    fsync_dir(folder)
    return manifest


# -- the store ---------------------------------------------------------------------------
class SessionStore:
    """The sessions folder: save, load, list and remove named sessions."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = sessions_root(root)

    def path_of(self, name: str) -> Path:
        return self.root / validate_name(name)

    def resolve(self, name_or_path: str | os.PathLike) -> Path:
        """An existing path as is; otherwise a session name in this store."""
        path = Path(name_or_path)
        if path.exists():
            return path
        text = str(name_or_path)
        if isinstance(name_or_path, str) and _NAME.match(text) and ".." not in text:
            self.recover(text)
            candidate = self.root / text
            if candidate.exists():
                return candidate
            raise DamagedFile(f"no session or file named {text!r} (sessions are looked for in {self.root})")
        raise DamagedFile(f"{text}: no such file or session")

    # -- saving ------------------------------------------------------------------------
    def save(self, name: str, traces: Iterable[Trace], state: UIState | None = None, force: bool = False) -> Path:
        """Write `traces` and `state` as session `name`; atomic; refuses to replace without force."""
        validate_name(name)
        traces = list(traces)
        if not traces or not all(isinstance(t, Trace) for t in traces):
            raise TracerError("a session needs at least one trace")
        state = state or UIState()
        target = self.root / name
        work = self.open_work(name, force)
        with self.writing_into(work, name):
            write_session_folder(work, name, traces, state, self.created_of(name))
            self.commit_work(work, name, force)
        return target

    def open_work(self, name: str, force: bool) -> Path:
        """What a save checks before it writes anything (a valid name; an existing session is
        replaced only with `force`), then the new hidden folder it writes the session into."""
        validate_name(name)
        target = self.root / name
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TracerError(f"cannot create the sessions folder {self.root}: {exc.strerror or exc}") from None
        self.recover(name)
        if target.exists() or target.is_symlink():
            self._check_replaceable(target, force)
        try:
            return make_hidden_folder(self.root, _work_prefix(name, "tmp"))
        except OSError as exc:
            raise TracerError(f"cannot write in {self.root}: {exc.strerror or exc}") from None

    def created_of(self, name: str) -> str | None:
        """When the session being replaced was first saved (a replaced session keeps its date)."""
        with contextlib.suppress(Exception):
            created = _read_json(self.root / name / MANIFEST, 1024**2).get("created")
            return created if isinstance(created, str) else None
        return None

    @contextlib.contextmanager
    def writing_into(self, work: Path, name: str):
        """Around everything a save does in its work folder: on any failure (a full disk, Ctrl-C)
        the folder is deleted, and an OSError becomes a one-line error."""
        try:
            yield
        except OSError as exc:
            rmtree(work)
            raise TracerError(f"cannot save session {name!r}: {exc.strerror or exc}") from None
        except BaseException:
            rmtree(work)
            raise

    def commit_work(self, work: Path, name: str, force: bool) -> None:
        """Put a finished work folder in place as session `name` (see _commit)."""
        self._commit(work, self.root / name, name, force)

    def _check_replaceable(self, target: Path, force: bool) -> None:
        if not force:
            raise TracerError(f"session {target.name!r} already exists in {self.root}; use --force to replace it")
        if target.is_symlink() or not target.is_dir() or not (target / MANIFEST).is_file():
            raise TracerError(f"{target} exists and is not a session folder; not replacing it")

    def _commit(self, work: Path, target: Path, name: str, force: bool) -> None:
        """Move the finished folder into place; the old session (if any) goes only once the new is in."""
        asides = []
        for _ in range(50):
            try:
                os.rename(work, target)  # fails if target is a non-empty folder
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            self._check_replaceable(target, force)
            if _exchange(work, target):
                asides.append(work)  # work now holds the old session
                break
            aside = hidden_name(self.root, _work_prefix(name, "old"))
            try:
                os.rename(target, aside)
            except FileNotFoundError:
                continue  # another writer moved it; try again
            asides.append(aside)
        else:
            raise TracerError(f"cannot save session {name!r}: other writers keep replacing it")
        fsync_dir(self.root)
        for aside in asides:
            rmtree(aside)

    def remember_place(self, name: str, state: UIState, traces: list[Trace]) -> bool:
        """Write `state` (where the user is, the bookmarks) into session `name`'s manifest, as the UI
        does on quit; False, with nothing written, unless the session on disk holds `traces` (the
        same inputs and step counts, in order; a trace added since it was saved is not in it).

        Only session.json changes, through a temp file, fsync and rename: a writer killed at any
        moment leaves the old manifest or the new one, never half of one, and the tensors and
        metadata are not touched."""
        folder = self.path_of(name)
        self.recover(name)
        try:
            manifest = read_manifest(folder)
        except DamagedFile:
            return False
        entries = manifest["traces"]
        if len(entries) > len(traces) or state.trace >= len(entries) or any(
            entry.get("input") != trace.input.get("text") or entry.get("steps") != len(trace)
            for entry, trace in zip(entries, traces)
        ):
            return False
        saved = UIState.from_dict(state.to_dict())
        saved.bookmarks = [b for b in saved.bookmarks if b.trace < len(entries)]
        manifest["ui"] = saved.to_dict()
        document = orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n"
        with atomic_write(folder / MANIFEST) as out:
            out.write(document)
        return True

    def recover(self, name: str | None = None) -> None:
        """Tidy up after writers that died: delete their temp folders, put back a session left aside,
        and (for a named session) the temp file of a manifest write that was killed (remember_place)."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        if name is not None and (self.root / name).is_dir():
            remove_dead_temps(self.root / name)
        for entry in entries:
            match = _WORK.match(entry.name)
            if not match or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
                continue
            path = Path(entry.path)
            target = self.root / match["name"]
            if match["kind"] == "old" and not target.exists() and (path / MANIFEST).is_file():
                with contextlib.suppress(OSError):
                    os.rename(path, target)
                    continue
            rmtree(path)

    # -- loading -----------------------------------------------------------------------
    def load(self, name_or_path: str | os.PathLike) -> Session:
        return load_session(self.resolve(name_or_path))

    # -- listing and removing ----------------------------------------------------------
    def list(self) -> list[SessionInfo]:
        """Every session in the folder, by name; a damaged one is listed with its error."""
        if not self.root.is_dir():
            return []
        self.recover()
        rows = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if not (path / MANIFEST).exists():
                continue  # not a session (a session folder always has its manifest)
            rows.append(self.info(path))
        return rows

    def info(self, path: Path) -> SessionInfo:
        info = SessionInfo(name=path.name, path=path, size=_folder_size(path))
        try:
            manifest = read_manifest(path)
        except DamagedFile as exc:
            info.error = str(exc)
            return info
        entries = manifest["traces"]
        first = entries[0]
        info.created, info.updated = manifest.get("created"), manifest.get("updated")
        info.model, info.input, info.output = first.get("model"), first.get("input"), first.get("output")
        info.steps = sum(e["steps"] for e in entries if isinstance(e.get("steps"), int))
        info.traces = len(entries)
        return info

    def remove(self, name: str) -> None:
        target = self.path_of(name)
        self.recover(name)
        if not target.is_dir() or target.is_symlink():
            raise BadInput(f"no session named {name!r} in {self.root}")
        if not (target / MANIFEST).is_file():
            raise TracerError(f"{target} is not a session folder (no {MANIFEST}); not removing it")
        doomed = hidden_name(self.root, _work_prefix(name, "rm"))
        try:
            os.rename(target, doomed)  # disappears from listings at once
        except OSError as exc:
            raise TracerError(f"cannot remove session {name!r}: {exc.strerror or exc}") from None
        rmtree(doomed)


def _folder_size(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


# -- reading -----------------------------------------------------------------------------
def _read_json(path: Path, limit: int):
    """Parse a JSON file; missing, oversized, truncated or invalid -> DamagedFile naming it."""
    return _parse_json(read_regular(path, limit, follow_links=False, what="a session file"), path)


def _parse_json(raw: bytes, path: Path):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        what = "truncated JSON" if raw.strip() and raw.rstrip()[-1:] not in (b"}", b"]") else "not valid JSON"
        raise DamagedFile(f"{path}: {what} ({exc})") from None


def read_manifest(folder: Path) -> dict:
    """session.json, validated: format, version, and a well-formed traces list."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise DamagedFile(f"{folder}: no such session")
    manifest = _read_json(path, 64 * 1024**2)

    def fail(message: str):
        raise DamagedFile(f"{path}: {message}")

    if not isinstance(manifest, dict):
        fail("not a tracer session (the top level is not an object)")
    if manifest.get("format") != FORMAT:
        fail(f"not a tracer session (format is {manifest.get('format')!r}, expected {FORMAT!r})")
    if manifest.get("version") not in READABLE_VERSIONS:
        fail(f"unsupported session version {manifest.get('version')!r} (this tracer reads version {VERSION})")
    entries = manifest.get("traces")
    if not isinstance(entries, list) or not entries:
        fail("'traces' is missing or empty")
    check_nesting(manifest, fail, "the manifest")
    for key in ("created", "updated", "name", "tracer_version"):  # shown by `tracer sessions`
        if manifest.get(key) is not None and type(manifest[key]) is not str:
            fail(f"'{key}' must be a string, not {type(manifest[key]).__name__}")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict):
            fail(f"trace {number} is not an object")
        for key in ("model", "arch", "created", "input", "output"):
            if entry.get(key) is not None and type(entry[key]) is not str:
                fail(f"trace {number}: '{key}' must be a string, not {type(entry[key]).__name__}")
        if entry.get("steps") is not None and not (type(entry["steps"]) is int and 0 <= entry["steps"] <= 2**63 - 1):
            fail(f"trace {number}: 'steps' must be a count, not {entry['steps']!r}")
        for key in ("meta", "tensors"):
            value = entry.get(key)
            if not isinstance(value, str) or not _FILE.match(value):
                fail(f"trace {number}: {key} file {value!r} is not a session file name")
    return manifest


def _checked_steps(items: list, label_sets: list, fail) -> list[Step]:
    """Every step's metadata checked one step at a time (tracer.trace.schema): refuses the first
    problem, naming its step."""
    steps = []
    seen_axes: set = set()
    for position, item in enumerate(items):
        if not isinstance(item, dict):
            fail(f"step {position} is not an object")
        refs = item.pop("labels", {})  # indices into label_sets, checked below
        step_id, shape, dtype, axes = validate_meta(item, position, fail, seen_axes)
        if type(refs) is not dict or not all(type(i) is int and 0 <= i < len(label_sets) for i in refs.values()):
            fail(f"step {step_id!r} has invalid labels")
        extra = {key: value for key, value in item.items() if key not in META_KEYS}
        if extra:
            extra = validate_extra(extra, lambda m, step_id=step_id: fail(f"step {step_id!r}: {m}"), shape,
                                   parse_name(step_id.partition("@")[0])["kind"])
        cached = validate_cached(item, lambda m, step_id=step_id: fail(f"step {step_id!r}: {m}"))
        steps.append(Step(
            id=step_id, shape=shape, dtype=dtype, axes=axes,
            labels=usable_labels({axis: label_sets[i] for axis, i in refs.items()}, full_shape(shape, axes, cached), axes),  # noqa: E501
            _stats=usable_stats(item.get("stats")), extra=extra, cached=cached,
        ))
    return steps


_PLAIN_KEYS = frozenset({"index", "id", "shape", "dtype", "axes", "labels", "cached"})


def _plain_steps(items: list, label_sets: list, fail) -> list[Step] | None:
    """The steps of a trace whose metadata is plainly good, checked in one pass; None at the first
    step that is not (the caller then runs `_checked_steps`, which names the problem).

    The same checks as `_checked_steps` (validate_meta and the rest), each done once per distinct
    value: a 40-step decode has ~9,000 steps but a few hundred names, layouts and label
    references, and its metadata is read before replay's first frame. What is checked per step
    is only what differs between steps that share those (the id's suffix, the index, the counts).
    Extras (a prediction's top_k, saved stats) go through the same functions as there.
    """
    n_sets = len(label_sets)
    names: dict[str, dict] = {}                      # name -> its parts, the name checked
    suffixes: dict[str, tuple] = {"": (None, None)}  # what follows "@" -> (decoding step, training step)
    layouts: dict[tuple, tuple] = {}                 # (shape, dtype, axes, kind) -> (shape, axes, number), checked
    resolved: dict[tuple, dict] = {}                 # (label refs, full shape, axes) -> usable labels
    steps = []
    append = steps.append
    for position, item in enumerate(items):
        if type(item) is not dict:
            return None
        step_id = item.get("id")
        if type(step_id) is not str or not 0 < len(step_id) <= MAX_ID_CHARS:
            return None
        name, _, suffix = step_id.partition("@")
        numbers = suffixes.get(suffix)
        if numbers is None:
            try:
                _, t, s = split_step_id(step_id)
            except ValueError:
                return None
            if len(suffix) - (s is not None) > 18:  # within 64 bits
                return None
            numbers = suffixes[suffix] = (t, s)
        parts = names.get(name)
        if parts is None:
            parts = parse_name(name)
            if parts["layer"] is not None and parts["layer"] > MAX_LAYER:
                return None
            names[name] = parts
        if item.get("index", position) != position:
            return None
        shape, dtype, axes, kind = item.get("shape"), item.get("dtype"), item.get("axes"), parts["kind"]
        if type(shape) is not list or type(axes) is not list:
            return None
        try:
            layout_key = (tuple(shape), dtype, tuple(axes), kind)
            layout = layouts.get(layout_key)
        except TypeError:  # a list or dict inside: not hashable, and not valid either
            return None
        if layout is None:
            if not _plain_layout(shape, dtype, axes, kind):
                return None
            layout = layouts[layout_key] = (layout_key[0], layout_key[2], len(layouts))
        for n in shape:  # 2 == 2.0 == True as keys: the types are checked every time
            if type(n) is not int:
                return None
        shape_t, axes_t, layout_number = layout
        cached = item.get("cached", 0)
        if type(cached) is not int or cached < 0:
            return None
        refs = item.get("labels", {})
        if type(refs) is not dict:
            return None
        if len(item) > len(_PLAIN_KEYS) or not item.keys() <= _PLAIN_KEYS:
            extra = {key: value for key, value in item.items() if key not in META_KEYS}
            stats = usable_stats(item.get("stats"))
        else:
            extra, stats = {}, None
        try:
            labels_key = (layout_number, cached, *refs.items())
            labels = resolved.get(labels_key)
        except TypeError:
            return None
        for i in refs.values():
            if type(i) is not int:
                return None
        if labels is None:
            for i in refs.values():
                if not 0 <= i < n_sets:
                    return None
            labels = resolved[labels_key] = usable_labels(
                {axis: label_sets[i] for axis, i in refs.items()}, full_shape(shape_t, axes_t, cached), axes_t)
        if extra:
            extra = validate_extra(extra, lambda m, step_id=step_id: fail(f"step {step_id!r}: {m}"), shape_t, kind)
        step = Step(step_id, shape_t, dtype, axes_t, dict(labels), stats, extra, position, cached=cached)
        known = step.__dict__  # what the step would work out from its id on first use, known here
        known["name"], known["_parts"] = name, parts
        known["decode_step"], known["train_step"] = numbers
        append(step)
    return steps


def _plain_layout(shape: list, dtype, axes: list, kind: str) -> bool:
    """validate_meta's checks of a shape, dtype and axes (for a step of `kind`), as a yes or no."""
    if len(shape) > MAX_RANK or len(axes) != len(shape) or type(dtype) is not str or dtype not in DTYPES:
        return False
    for n in shape:
        if type(n) is not int or not 0 <= n <= INT64_MAX:
            return False
    if math.prod(shape) > MAX_ELEMENTS:
        return False
    if kind in ("probs", "logits") and shape and shape[-1] == 0:
        return False
    return all(type(axis) is str and len(axis) <= MAX_ID_CHARS for axis in axes)


def _read_trace(folder: Path, entry: dict, wanted: list[str] | None = None) -> Trace:
    """Trace `entry` of the session in `folder`, every step checked.

    `wanted` (replay's first frame): the ids the first screen shows. If the entry's pass index
    allows, only the passes up to theirs are read now and checked as a full read checks them; the
    Trace reads the rest when something needs it (`Trace.complete`), and checks the whole again."""
    meta_path = folder / entry["meta"]
    raw = read_regular(meta_path, MAX_META_BYTES, follow_links=False, what="a session file")

    def fail(message: str):
        raise DamagedFile(f"{meta_path}: {message}")

    if wanted is not None:
        trace = _read_first_passes(folder, entry, raw, wanted, fail)
        if trace is not None:
            return trace
    body, steps = _meta_steps(_parse_json(raw, meta_path), entry, fail)
    tensors = TensorFile(folder / entry["tensors"], steps)
    validate_consistency(steps, fail)
    for step in steps:
        step._loader = tensors.loader(step)
    return _trace(body, steps, fail)


def _meta_steps(document, entry: dict, fail) -> tuple[dict, list[Step]]:
    """A trace's metadata document checked: its header (`body`) and its steps (no loaders yet)."""
    if not isinstance(document, dict) or document.get("format") != TRACE_META_FORMAT:
        fail(f"not a session trace (format is {document.get('format') if isinstance(document, dict) else None!r}, expected {TRACE_META_FORMAT!r})")
    if document.get("version") not in READABLE_VERSIONS:
        fail(f"unsupported session trace version {document.get('version')!r} (this tracer reads version {VERSION})")
    if document.get("tensors") != entry["tensors"]:
        fail(f"names tensor file {document.get('tensors')!r}, the manifest says {entry['tensors']!r}")
    body = document.get("trace")
    validate_header(body, fail)
    label_sets = document.get("label_sets", [])
    if not isinstance(label_sets, list) or not all(
        isinstance(tokens, list) and all(isinstance(t, str) for t in tokens) for tokens in label_sets
    ):
        fail("'label_sets' must be a list of lists of strings")
    steps = _plain_steps(body["steps"], label_sets, fail)
    if steps is None:  # something is wrong, or unusual: the step-by-step check finds it and names it
        steps = _checked_steps(body["steps"], label_sets, fail)
    return body, steps


def _trace(body: dict, steps: list[Step], fail, later: Later | None = None) -> Trace:
    try:
        return Trace(
            steps, model=body["model"], device=str(body.get("device", "unknown")), input=body["input"],
            output=body["output"], created=body.get("created") or None,
            tracer_version=str(body.get("tracer_version", "unknown")),
            precision=body.get("precision"), capture=body.get("capture"), later=later,
        )
    except ValueError as exc:
        fail(str(exc))


def _passes(entry: dict, meta_size: int) -> list[dict] | None:
    """The entry's pass index, if it is well formed (each pass ends after the one before, inside
    the files); None otherwise: it only makes the first frame quicker, so a bad one is ignored."""
    passes, count = entry.get("passes"), entry.get("steps")
    if type(passes) is not list or type(count) is not int or not 1 < len(passes) <= count:
        return None
    before, t_before = (0, 0, 0), None
    for number, item in enumerate(passes):
        if type(item) is not dict or not _PASS_KEYS <= item.keys():
            return None
        ends = (item.get("steps"), item.get("meta"), item.get("tensors"))
        if not all(type(n) is int for n in ends) or not all(a < b for a, b in zip(before, ends)):
            return None
        t, chosen = item.get("decode_step"), item.get("chosen")
        if not (chosen is None or type(chosen) is str) or not (t is None and number == 0 or type(t) is int):
            return None  # only the first pass (an encoder's) may have no decoding step
        if t_before is not None and not t > t_before:  # each decoding step one pass, in order
            return None
        before, t_before = ends, t
    if before[0] != count or before[1] >= meta_size:
        return None
    return passes


def _read_first_passes(folder: Path, entry: dict, raw: bytes, wanted: list[str], fail) -> Trace | None:
    """The first passes of a trace, up to the last one `wanted` names (at least the first),
    checked as `_read_trace` checks a whole trace; the later ones left for `Trace.complete`.
    None when the index is missing or does not fit (the caller then reads the whole trace)."""
    passes = _passes(entry, len(raw))
    if passes is None:
        return None
    number_of = {item["decode_step"]: number for number, item in enumerate(passes) if item["decode_step"] is not None}
    last = max((number_of.get(_decoding_step_of(step_id), 0) for step_id in wanted), default=0)
    if last == len(passes) - 1:
        return None  # the first screen needs every pass: read them all
    first = passes[last]
    try:  # the steps up to that pass, then closed as the document closes: the same bytes, cut short
        body, steps = _meta_steps(orjson.loads(raw[:first["meta"]] + _STEPS_TAIL), entry, fail)
        stats_read = [step._stats for step in steps]  # saved stats as read (the UI may work them out since)
        if not _same_runs(passes[:last + 1], steps):
            return None
    except (orjson.JSONDecodeError, DamagedFile):
        return None  # the whole read says what is wrong, naming it as it always does
    try:
        tensors = TensorFile(folder / entry["tensors"], steps, header_end=first["tensors"])
    except DamagedFile:
        return None
    meta_path = folder / entry["meta"]
    later = tuple(LaterPass(item["decode_step"], item["steps"] - before["steps"], item["chosen"])
                  for before, item in zip(passes[last:], passes[last + 1:]))

    def read_later() -> list[Step]:
        """Every step, checked as `_read_trace` checks them, from the bytes read at the start; the
        first passes must be what the first screen read, the later ones what the index says."""
        whole, every = _meta_steps(_parse_json(raw, meta_path), entry, fail)
        if {k: v for k, v in whole.items() if k != "steps"} != {k: v for k, v in body.items() if k != "steps"} or any(
                _step_key(a) != _step_key(b) or stats != b._stats for a, stats, b in zip(steps, stats_read, every)):
            fail("its first passes read differently on their own (a key given twice?)")
        if not _same_runs(passes, every):
            fail(f"its steps do not match the pass index in {MANIFEST}")
        rest = every[len(steps):]
        tensors.check_all(steps + rest)
        validate_consistency(every, fail)
        try:  # what the full read's Trace checks of its steps, with its message
            check_steps(every)
        except ValueError as exc:
            fail(str(exc))
        tensors.forget_header()  # only now: a refusal above leaves the header to check again
        for step in rest:
            step._loader = tensors.loader(step)
        return rest

    try:
        validate_consistency(steps, fail)
        for step in steps:
            step._loader = tensors.loader(step)
        return _trace(body, steps, fail, later=Later(later, read_later))
    except DamagedFile:
        tensors.close()
        return None


def _decoding_step_of(step_id: str) -> int | None:
    try:
        return split_step_id(step_id)[1]
    except ValueError:
        return None


def _step_key(step: Step) -> tuple:
    """What a step was read as: its metadata, but for its stats (the first screen may have worked
    them out since: `_read_first_passes` compares them as they were read)."""
    return (step.id, step.rows_shape, step.dtype, step.axes, step.labels, step.extra, step.cached)


def _restore_state(raw, traces: list[Trace]) -> UIState:
    """The saved UI state, with anything that points outside the session dropped."""
    try:
        state = UIState.from_dict(raw if isinstance(raw, dict) else {})
    except ValueError:
        state = UIState()
    if state.trace >= len(traces):
        state.trace = 0
    if state.head > _MAX_INDEX:
        state.head = 0
    if max(state.cell) > _MAX_INDEX:
        state.cell = (0, 0)
    for bookmark in state.bookmarks:
        bookmark.note = bookmark.note[:1000]
    if state.step is not None and state.step not in traces[state.trace]:
        state.step = None
    state.bookmarks = [b for b in state.bookmarks if 0 <= b.trace < len(traces) and b.step in traces[b.trace]]
    return state


def load_session(path: str | os.PathLike, first_screen: bool = False) -> Session:
    """Open a session folder: everything validated now, tensors read later, one at a time.

    `first_screen` (replay): read what the first screen shows first: of a long decode, the passes
    up to the saved place and its bookmarks; each Trace reads and checks the rest when first asked
    (the UI asks as soon as its first frame is drawn)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    wanted = _first_screen_ids(manifest) if first_screen else None
    with collector_paused():
        traces = [_read_trace(folder, entry, wanted[number] if wanted else None)
                  for number, entry in enumerate(manifest["traces"])]
    # the folder's name is the session's name (the manifest's copy is informational: a renamed
    # or hostile folder must not make the UI save somewhere else)
    return Session(name=folder.resolve().name, path=folder, traces=traces, state=_restore_state(manifest.get("ui"), traces), manifest=manifest)


def _first_screen_ids(manifest: dict) -> list[list[str]]:
    """For each trace, the ids its first screen may show: the saved step, the bookmarks."""
    try:
        saved = UIState.from_dict(manifest["ui"] if isinstance(manifest.get("ui"), dict) else {})
    except ValueError:
        saved = UIState()
    return [[b.step for b in saved.bookmarks if b.trace == number] + ([saved.step] if saved.step and saved.trace == number else [])
            for number in range(len(manifest["traces"]))]


def open_source(source: str | os.PathLike, sessions_dir: str | os.PathLike | None = None,
                first_screen: bool = False) -> Session:
    """A session name, a session folder or a JSON export -> a Session (an export has default UI
    state). `first_screen`: see load_session."""
    path = SessionStore(sessions_dir).resolve(source)
    if path.is_dir():
        return load_session(path, first_screen)
    from tracer.trace.load import read_json

    trace = read_json(path)
    return Session(name=path.stem, path=path, traces=[trace], state=UIState(), manifest={})
