"""A session written while its trace is recorded (`tracer run --save`): each pass's tensors go to
disk as soon as the pass has run, so memory holds about one pass beyond the model, not the trace.

    with SessionWriter(SessionStore(), "piyush", force=True) as writer:
        result = generate(loaded, text, traced=True, sink=writer.add)  # each pass's steps, as recorded
        writer.commit(result.trace)

It writes into the hidden work folder a regular save uses (`.NAME.tmp-PID-xxxx`) and puts it in
place with the same atomic commit, so a writer killed (SIGKILL, a crash) at any moment leaves what
a killed save leaves: the previous session of that name intact, nothing half-written listed, and
a folder the next use of the store deletes (SessionStore.recover). Ctrl-C or any error before the
commit deletes the folder at once. Whether the name may be used (`force`) is checked when the
writer opens, before anything is recorded.

The session on disk is the one SessionStore.save writes for the same trace, byte for byte but for
the manifest's dates: the tensors as StreamingTensorWriter writes them, then the metadata (steps
gain their extras and the logit lens after their pass has run) and the manifest, at the end.
"""

from __future__ import annotations

from pathlib import Path

from tracer.trace.atomic import rmtree
from tracer.trace.schema import validate_trace
from tracer.trace.session import SessionStore, refuse_saving, tensors_name, write_manifest, write_trace_meta
from tracer.trace.state import UIState
from tracer.trace.step import Step
from tracer.trace.tensor_file import StreamingTensorWriter
from tracer.trace.trace import Trace


class SessionWriter:
    """Session `name` in `store`, its one trace's tensors written pass by pass (`add`), the
    session put in place by `commit`; leaving the `with` block without a commit deletes it all."""

    def __init__(self, store: SessionStore, name: str, force: bool = False):
        self.store, self.name, self.force = store, name, force
        self.path = store.root / name
        self.work = store.open_work(name, force)  # refuses an existing session without force, now
        self._open = True  # not yet committed or aborted
        with store.writing_into(self.work, name):
            self._tensors = StreamingTensorWriter(self.work / tensors_name(0))

    def add(self, steps: list[Step]) -> None:
        """Write one pass's steps (complete: extras set); each then reads its tensor back from disk."""
        with self.store.writing_into(self.work, self.name):
            self._tensors.add(steps)

    def commit(self, trace: Trace, state: UIState | None = None) -> Path:
        """Finish the session with `trace` (the trace of the steps added, in order) and put it in place."""
        with self.store.writing_into(self.work, self.name):
            validate_trace(trace, refuse_saving)
            header_ends = self._tensors.finish(trace.steps)
            entry = write_trace_meta(self.work, 0, trace, header_ends)
            write_manifest(self.work, self.name, [entry], state or UIState(), self.store.created_of(self.name))
            self.store.commit_work(self.work, self.name, self.force)
        self._open = False
        return self.path

    def abort(self) -> None:
        """Delete what was written, unless it was committed (nothing of it was ever visible)."""
        if self._open:
            self._open = False
            self._tensors.close()
            rmtree(self.work)

    def __enter__(self) -> "SessionWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()
