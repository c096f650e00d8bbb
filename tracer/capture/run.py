"""Greedy decoding over a loaded model, traced or not; the same code path either way."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from tracer.capture.familiar import familiarity
from tracer.capture.lens import with_lens
from tracer.capture.recorder import STORE_DTYPES, Recorder
from tracer.capture.select import TapFilter, slicing_heads
from tracer.errors import BadInput
from tracer.nn.loading import LoadedModel
from tracer.nn.model import KVCache
from tracer.trace import Step, Trace, anatomy
from tracer.trace.step import parse_name, row_axis

DEFAULT_TOP_K = 5
DEFAULT_MAX_NEW_TOKENS = 40

@dataclass
class GenerationResult:
    """What the model produced; `trace` is set when the run was traced."""

    input_ids: list[int]
    input_tokens: list[str]
    output_ids: list[int]
    output_tokens: list[str]
    output_text: str
    predictions: list[dict] = field(default_factory=list)
    trace: Trace | None = None


def validate_request(loaded: LoadedModel, text: str, max_new_tokens, top_k,
                     chat: bool = False) -> tuple[list[int], list[str], int, int]:
    """Check a request against the model; the text's ids as the model's tokenizer policy gives them
    (tracer's own decoders get BOS later, in `generate`; a Hugging Face tokenizer adds what it adds)."""
    if not isinstance(text, str) or not text.strip():
        raise BadInput("the text is empty; give a sentence to trace, e.g. \"ich bin piyush\"")
    ids, tokens = loaded.tokenizer.encode(text, chat=chat)
    if not ids:
        raise BadInput("the text has no tokens this model knows")
    cfg = loaded.cfg
    if top_k is None:
        top_k = DEFAULT_TOP_K
    if top_k < 1:
        raise BadInput(f"--top-k must be at least 1, not {top_k}")
    vocab_size = cfg.decoder_vocab_size or cfg.vocab_size  # what is predicted: the decoder's vocabulary
    if top_k > vocab_size:
        raise BadInput(f"--top-k {top_k} is more than the vocabulary's {vocab_size} tokens")
    prefix = len(ids) + (1 if loaded.tokenizer.decoder_bos_id is not None and cfg.arch == "decoder" else 0)
    if prefix > cfg.max_positions:
        raise BadInput(f"the text is {len(ids)} tokens; the model has only {cfg.max_positions} positions")
    room = {"encoder-decoder": cfg.max_positions - 1, "decoder": cfg.max_positions - prefix, "encoder": 0}[cfg.arch]
    if max_new_tokens is None:
        max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, room)
    elif cfg.arch != "encoder":
        if max_new_tokens < 1:
            raise BadInput(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
        if max_new_tokens > room:
            raise BadInput(f"--max-new-tokens {max_new_tokens} is more than the {room} positions left in this model")
    if cfg.arch == "decoder" and room < 1:
        raise BadInput(f"the text fills all {cfg.max_positions} positions; nothing is left to generate")
    return ids, tokens, max_new_tokens, top_k


def allowed(probs: np.ndarray, suppressed) -> np.ndarray:
    """The probabilities with the tokens decoding never chooses (Marian's pad) set to 0, as generate()'s
    bad-words and suppress-tokens processors set their logits to −∞; the others are not renormalised,
    so they are still the model's own softmax."""
    if not suppressed:
        return probs
    probs = probs.copy()
    probs[sorted(suppressed)] = 0.0
    return probs


def choose(probs: np.ndarray, k: int, token) -> tuple[list[dict], dict]:
    """The k most likely tokens, and the greedy choice (the first of them); ties in index order."""
    order = top_indices(probs, k)
    top = [{"token": token(int(i)), "id": int(i), "prob": float(probs[i])} for i in order]
    return top, {"token": top[0]["token"], "id": top[0]["id"]}


def top_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest values, largest first, ties in index order: what a stable sort of
    the whole vocabulary gives, from a partition (a sort of 50,257 values took ~3-9 ms a step)."""
    if k >= len(probs) or np.isnan(probs).any():
        return np.argsort(-probs, kind="stable")[:k]
    kth = np.partition(probs, len(probs) - k)[len(probs) - k]  # the k-th largest value
    candidates = np.flatnonzero(probs >= kth)                  # every value that ties it, in index order
    return candidates[np.argsort(-probs[candidates], kind="stable")][:k]


@torch.no_grad()
def generate(loaded: LoadedModel, text: str, *, max_new_tokens=None, top_k=None, traced: bool = False,
             chat: bool = False, lens: bool = False, kv_cache: bool = True,
             select: TapFilter | None = None, sink: Callable[[list[Step]], None] | None = None,
             store_dtype: str | None = None) -> GenerationResult:
    """Greedy decoding; with `traced`, every tap of every forward pass is recorded (and, with `lens`,
    each layer's logit lens: tracer.capture.lens); with `chat`, the text is one user message in the
    model's chat template.

    With `kv_cache` (the default) the first decoding pass runs the prompt (or the start token) and
    each later one only the newest token, against the keys and values cached from the passes before;
    its steps hold the rows it computed (see record_pass). Without it every pass re-runs the whole prefix.
    `select` records only some taps and decoding steps (tracer/capture/select.py); a kept decoding
    step among left-out ones is recorded whole, so its tensors stand alone: under a KV cache its
    pass re-runs the prefix, and the cached pass that feeds the decode runs unrecorded.

    `sink` (traced runs) is handed each recorded pass's steps, in order, once the pass is complete
    (its extras set, its lens steps added), before the next pass runs: a session writer puts them
    on disk there (tracer.trace.session_writer), so the run holds one pass in memory, not the trace.
    `store_dtype` (float32, float16; None: as computed) is what the trace stores floating values as."""
    ids, tokens, max_new_tokens, top_k = validate_request(loaded, text, max_new_tokens, top_k, chat)
    storage = store_dtype_of(store_dtype)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    select = select if select is not None and not select.empty else None
    recorder = None
    if traced:
        recorder = Recorder(model, select.taps if select is not None else None, store_dtype=storage)
    heads: dict[str, dict] = {}  # with --heads: each sliced tap's `heads` extra
    if recorder is not None and select is not None and select.heads is not None:
        select.check_heads(loaded.cfg.n_heads)
        recorder.record = slicing_heads(recorder.record, select, loaded.cfg.n_heads, loaded.cfg.kv_heads, heads)
    steps: list[Step] = []
    complete = 0  # steps[:complete] belong to passes already finished (see finish_pass)
    rows_so_far: dict[str, int] = {}  # a KV-cached decode: rows each tap has recorded in earlier passes

    def forward(fn, own: list[str], source: list[str] | None = None, t: int | None = None, cached: bool = False):
        """Run fn once, recording its taps as steps tagged with decoding step t."""
        if recorder is None:
            return fn()
        finish_pass()
        if select is not None and not select.keeps_step(t):
            out = fn()
            recorder.discard()
            return out
        out, recorded = record_pass(recorder, fn, own, source, t, rows_so_far if cached else None, heads)
        steps.extend(recorded)
        return out

    def finish_pass() -> None:
        """The pass recorded last is complete once the next one is about to run (or the run ends):
        the predictions made from its output are in its `probs` step's extras by then. Add its
        logit lens, after its `probs` step, and hand it to the sink."""
        nonlocal complete
        new = steps[complete:]
        if lens and new:
            new = steps[complete:] = with_lens(loaded, new, top_k, store_dtype=store_dtype)
            recorder.discard()  # the lens ran the final norm, whose taps are hooked: not a pass of the model
        if sink is not None and new:
            sink(new)
        complete = len(steps)

    def tensor(seq: list[int]) -> torch.Tensor:
        return torch.tensor([seq], dtype=torch.long, device=device)

    arch = loaded.cfg.arch
    predictions: list[dict] = []
    generated: list[int] = []
    with contextlib.ExitStack() as hooks:
        if recorder is not None:
            hooks.enter_context(recorder.attached())  # once for the whole run, not per pass
        if arch == "encoder" and loaded.cfg.output != "logits":
            forward(lambda: model(tensor(ids)), tokens)  # a pooled or sentence vector: no token to predict
        elif arch == "encoder":
            logits = forward(lambda: model(tensor(ids)), tokens)
            probs = logits[0].float().softmax(-1).cpu().numpy()
            masked = [i for i, token_id in enumerate(ids) if token_id == tok.mask_id] or list(range(len(ids)))
            filled = list(ids)
            for pos in masked:
                top, chosen = choose(probs[pos], top_k, tok.token)
                predictions.append({"pos": pos, "token": tokens[pos], "top_k": top, "chosen": chosen})
                filled[pos] = chosen["id"]
            if traced:
                last_probs(steps).extra["predictions"] = predictions
            generated = filled
        else:
            if arch == "encoder-decoder":
                memory = forward(lambda: model.encode(tensor(ids)), tokens)
                prefix = [tok.decoder_start_id]  # BOS for tracer's own models; a Hugging Face model's decoder start
                step_fn = lambda seq, cache: model.decode(tensor(seq), memory, cache=cache)  # noqa: E731
            else:
                prefix = ([tok.decoder_bos_id] if tok.decoder_bos_id is not None else []) + list(ids)
                step_fn = lambda seq, cache: model(tensor(seq), cache=cache)  # noqa: E731
            # room for every position the decode can run: the last pass runs all but the last new token
            cache = KVCache(capacity=len(prefix) + max_new_tokens - 1) if kv_cache else None
            if recorder is not None and cache is not None:
                recorder.shared = cache.holds  # the taps of new keys and values see the cache's copy: no second one
            for t in range(1, max_new_tokens + 1):
                seq = prefix + generated
                new = seq[cache.seen:] if cache is not None else seq  # with a cache: the token not yet run
                labels = [tok.token(i) for i in seq]
                if cache is not None and t > 1 and select is not None and select.steps is not None:
                    if select.keeps_step(t):  # recorded whole: the rows before it were not kept
                        forward(lambda: step_fn(seq, None), labels, tokens, t)
                    logits = step_fn(new, cache)
                    if recorder is not None:
                        recorder.discard()
                else:
                    logits = forward(lambda: step_fn(new, cache), labels, tokens, t, cached=cache is not None)
                top, chosen = choose(allowed(logits[0].float().softmax(-1).cpu().numpy(), tok.suppressed_ids),
                                     top_k, tok.token)
                predictions.append({"step": t, "top_k": top, "chosen": chosen})
                if traced and (select is None or select.keeps_step(t)):
                    last_probs(steps).extra.update(top_k=top, chosen=chosen)
                if chosen["id"] in tok.stop_ids:
                    break
                generated.append(chosen["id"])
        if recorder is not None:
            finish_pass()
    output_tokens = [tok.token(i) for i in generated]
    result = GenerationResult(ids, tokens, generated, output_tokens, tok.decode(generated), predictions)
    if traced:
        result.trace = Trace(
            steps,
            model={"name": loaded.cfg.name, "arch": arch, "config": loaded.cfg.to_dict(),
                   "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                   "source": loaded.source, "tokenization": tok.policy(arch, chat)},
            device=device_label(device),
            input={"text": text, "tokens": tokens, "ids": ids} | ({"prompt": tok.render_chat(text)} if chat else {})
            | familiarity(loaded, text),
            output={"text": result.output_text, "tokens": output_tokens, "ids": generated},
            capture={"kv_cache": kv_cache and arch != "encoder"} | ({"filter": select.to_dict()} if select else {})
            | ({"store_dtype": store_dtype} if store_dtype else {}),
        )
    return result


def store_dtype_of(name: str | None) -> torch.dtype | None:
    """`--store-dtype`'s torch dtype (None: store values as computed)."""
    if name is None:
        return None
    if name not in STORE_DTYPES:
        raise BadInput(f"--store-dtype {name!r}: expected one of {', '.join(STORE_DTYPES)}")
    return STORE_DTYPES[name]


def record_pass(recorder: Recorder, fn, own: list[str], source: list[str] | None = None, t: int | None = None,
                rows_so_far: dict[str, int] | None = None, heads: dict[str, dict] | None = None):
    """Run fn once (inside `recorder.attached()`); return its output and the pass's steps.

    The values come to the host in one batch after the pass (see Recorder.pass_values).
    `rows_so_far` (a KV-cached decode, shared by its passes): how many rows of its position (query)
    axis each tap recorded before. A step of a later pass holds only its new rows and says how many
    came before (`Step.cached`); its token labels are those of the full tensor the Trace assembles.
    `heads`: the `heads` extra of each tap a `--heads` filter sliced (tracer/capture/select.py)."""
    out = fn()
    steps = []
    shared: dict[tuple, dict] = {}  # one labels dict for the steps of a pass whose labels are alike
    for name, array in recorder.pass_values():
        axes = anatomy.axes_for(parse_name(name)["kind"], array.ndim)
        axis = row_axis(axes) if rows_so_far is not None else None
        cached = rows_so_far.get(name, 0) if axis is not None else 0
        full_shape = array.shape
        if axis is not None:
            rows_so_far[name] = cached + array.shape[axis]
            full_shape = array.shape[:axis] + (cached + array.shape[axis],) + array.shape[axis + 1:]
        labels = anatomy.token_labels(name, axes, own, source, full_shape)
        labels = shared.setdefault(tuple((axis, id(tokens)) for axis, tokens in labels.items()), labels)
        extra = {"heads": heads[name]} if heads and name in heads else None
        steps.append(Step.from_array(anatomy.with_step(name, t), array, axes, labels, extra, cached=cached))
    return out, steps


def last_probs(steps: list[Step]) -> Step:
    """The probs step of the pass just recorded (the head's last tap)."""
    return next(step for step in reversed(steps) if step.kind == "probs")


def trace_text(loaded: LoadedModel, text: str, *, max_new_tokens=None, top_k=None, chat: bool = False,
               lens: bool = False, kv_cache: bool = True, select: TapFilter | None = None,
               sink: Callable[[list[Step]], None] | None = None, store_dtype: str | None = None) -> Trace:
    """Run greedy decoding on `text` (with `chat`, in the model's chat template) and return its Trace
    (`sink`: each pass's steps as they are recorded, see generate)."""
    return generate(loaded, text, max_new_tokens=max_new_tokens, top_k=top_k, traced=True, chat=chat, lens=lens,
                    kv_cache=kv_cache, select=select, sink=sink, store_dtype=store_dtype).trace


def device_label(device: torch.device) -> str:
    """What the trace (and the UI header) names the device by: `cpu`, `cuda:0 (NVIDIA H100 80GB HBM3)`."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)
