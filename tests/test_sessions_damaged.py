"""Damaged or hostile sessions are refused: one line naming the problem, exit 1, never a traceback."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tracer
from tracer.cli import cli
from tracer.errors import DamagedFile
from tracer.trace.session import SessionStore

from session_helpers import synthetic_trace

STEP = "encoder.0.attn.hook_pattern"  # [2, 3, 3] float32


@pytest.fixture
def session(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRACER_SESSIONS_DIR", str(tmp_path / "sessions"))
    return SessionStore().save("victim", [synthetic_trace()])


def read_header(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_header(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_json(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def refused(source, *fragments: str) -> str:
    """Every reader refuses it the same way: replay, export, check, and the Python API."""
    for args in (["replay", str(source), "--no-tui"], ["check", str(source)], ["export", str(source), "-o", os.devnull + ".json"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
    with pytest.raises(DamagedFile):
        tracer.load(source)
    return lines[0]


def test_truncated_tensor_file(session):
    path = session / "trace-0.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    refused(session, "trace-0.safetensors", "truncated")


def test_tensor_file_cut_inside_its_header(session):
    path = session / "trace-0.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    refused(session, "trace-0.safetensors", "truncated")
    path.write_bytes(b"\x01\x02")
    refused(session, "trace-0.safetensors", "truncated")


@pytest.mark.parametrize("file", ["session.json", "trace-0.meta.json"])
def test_truncated_json(session, file):
    path = session / file
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(session, file, "truncated JSON")


@pytest.mark.parametrize("file", ["session.json", "trace-0.meta.json"])
def test_invalid_json(session, file):
    (session / file).write_text("{'format': 'tracer-session'}")
    refused(session, file, "not valid JSON")


def test_unknown_session_version(session):
    edit_json(session / "session.json", lambda d: d.update(version=3))
    refused(session, "session.json", "unsupported session version 3")


def test_unknown_trace_metadata_version(session):
    edit_json(session / "trace-0.meta.json", lambda d: d.update(version=7))
    refused(session, "trace-0.meta.json", "unsupported session trace version 7")


def test_not_a_session(session):
    edit_json(session / "session.json", lambda d: d.update(format="something-else"))
    refused(session, "not a tracer session")


def test_tensor_shape_disagrees_with_metadata(session):
    path = session / "trace-0.safetensors"
    header, data = read_header(path)
    header[STEP]["shape"] = [3, 2, 3]  # same byte count, different shape
    write_header(path, header, data)
    refused(session, STEP, "has shape [3, 2, 3], its metadata says [2, 3, 3]")


def test_metadata_shape_disagrees_with_tensor(session):
    def change(document):
        step = next(s for s in document["trace"]["steps"] if s["id"] == STEP)
        step["shape"] = [2, 9]
        step["axes"] = ["head", "query"]
    edit_json(session / "trace-0.meta.json", change)
    refused(session, STEP, "has shape [2, 3, 3], its metadata says [2, 9]")


def test_tensor_dtype_disagrees_with_metadata(session):
    path = session / "trace-0.safetensors"
    header, data = read_header(path)
    header[STEP]["dtype"] = "I32"
    write_header(path, header, data)
    refused(session, STEP, "is 'I32', its metadata says float32")


def test_header_length_claiming_gigabytes(session):
    path = session / "trace-0.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 5 * 1024**3) + raw[8:])
    refused(session, "trace-0.safetensors", "header claims 5.0 GB")


def test_header_claiming_a_gigabyte_tensor(session):
    """Metadata and header agree on a 40 GB tensor the file does not hold: refused before reading."""
    huge = [100_000, 100_000]

    def change(document):
        step = next(s for s in document["trace"]["steps"] if s["id"] == STEP)
        step["shape"], step["axes"] = huge, ["query", "key"]
    edit_json(session / "trace-0.meta.json", change)
    path = session / "trace-0.safetensors"
    header, data = read_header(path)
    start = header[STEP]["data_offsets"][0]
    header[STEP].update(shape=huge, data_offsets=[start, start + 4 * 100_000 * 100_000])
    write_header(path, header, data)
    refused(session, STEP, "truncated", "37.3 GB")


def test_tensor_byte_count_disagrees_with_shape(session):
    path = session / "trace-0.safetensors"
    header, data = read_header(path)
    start, end = header[STEP]["data_offsets"]
    header[STEP]["data_offsets"] = [start, end + 4]
    write_header(path, header, data)
    refused(session, STEP, "claims 76 bytes for a 72-byte tensor")


def test_tensor_header_is_garbage(session):
    path = session / "trace-0.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"\xff" * 16 + raw[24:])
    refused(session, "trace-0.safetensors", "header is not valid JSON")


@pytest.mark.parametrize("file", ["trace-0.safetensors", "trace-0.meta.json", "session.json"])
def test_missing_files(session, file):
    (session / file).unlink()
    refused(session, f"missing file {file}")


def test_missing_tensor(session):
    path = session / "trace-0.safetensors"
    header, data = read_header(path)
    header[f"{STEP}-renamed"] = header.pop(STEP)
    write_header(path, header, data)
    line = refused(session, "trace-0.safetensors")
    assert f"tensor {STEP!r} is missing" in line or "does not list" in line


@pytest.mark.parametrize("hostile", ["../../outside.safetensors", "/etc/passwd", "trace-0.safetensors/../x"])
def test_manifest_cannot_point_outside_the_folder(session, hostile):
    edit_json(session / "session.json", lambda d: d["traces"][0].update(tensors=hostile))
    refused(session, "session.json", "is not a session file name")


def test_symlinked_tensor_file_is_refused(session, tmp_path):
    target = tmp_path / "elsewhere.safetensors"
    (session / "trace-0.safetensors").rename(target)
    (session / "trace-0.safetensors").symlink_to(target)
    refused(session, "symbolic link")


def test_no_pickle_is_ever_read(session):
    """A session is data: JSON and safetensors only; a pickle dropped in the folder is ignored."""
    (session / "trace-0.pkl").write_bytes(b"\x80\x04cos\nsystem\n.")
    assert tracer.load(session).ids == synthetic_trace().ids
    for path in session.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            assert STEP in read_header(path)[0]
        else:
            assert path.name == "trace-0.pkl"
    source = (Path(tracer.__file__).parent / "trace" / "session.py").read_text()
    for banned in ("import pickle", "allow_pickle", "torch.load", "np.load("):
        assert banned not in source


def test_damaged_session_in_a_real_process_prints_one_line(session):
    path = session / "trace-0.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    proc = subprocess.run([sys.executable, "-m", "tracer", "replay", "victim", "--no-tui"],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("Error: ")


@pytest.mark.parametrize("field,value,message", [
    ("shape", [-1, 3, 3], "invalid shape"),
    ("dtype", "object", "unsupported dtype 'object'"),
    ("axes", ["head", 3, "key"], "axes"),
    ("index", 99, "out of order"),
    ("labels", {"query": 10_000}, "invalid labels"),
])
def test_malformed_step_metadata(session, field, value, message):
    def change(document):
        step = next(s for s in document["trace"]["steps"] if s["id"] == STEP)
        step[field] = value
    edit_json(session / "trace-0.meta.json", change)
    refused(session, "trace-0.meta.json", STEP, message)


def test_malformed_top_k_is_refused(session):
    def change(document):
        step = next(s for s in document["trace"]["steps"] if s["id"] == "decoder.hook_probs@1")
        step["top_k"] = [{"token": 3, "id": "x"}]
    edit_json(session / "trace-0.meta.json", change)
    refused(session, "trace-0.meta.json", "decoder.hook_probs@1", "top_k")
