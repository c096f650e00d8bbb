"""The logit lens: what each layer's residual stream would predict if it were the last layer.

After a traced run, each pass that ends in a prediction gets one `lens_probs` step per layer:
the layer's output (what it hands to the next layer, read from the recorded steps) through the
final norm, where the model has one, and the unembedding, as a softmax over the vocabulary.
Replay has no weights, so this is computed at capture time and recorded as steps of their own
(`decoder.L.hook_lens_probs@t`, `blocks.L.hook_lens_probs`), placed after the pass's `probs`.

The last layer's lens is the model's own distribution: its output is what the head reads.
"""

from __future__ import annotations

import numpy as np
import torch

from tracer.trace import Step, anatomy

LENS_KIND = "lens_probs"


def with_lens(loaded, steps: list[Step], top_k: int, store_dtype: str | None = None) -> list[Step]:
    """`steps` with the lens steps of every predicting pass inserted after its `probs` step
    (stored as `store_dtype`, as the run's other steps, when given; else float32)."""
    model, cfg = loaded.model, loaded.cfg
    head = model.decoder if cfg.arch == "encoder-decoder" else model
    final_norm = getattr(head, "ln_final", None) if cfg.norm == "pre" else None
    by_id = {step.id: step for step in steps}
    stack = "decoder" if cfg.arch == "encoder-decoder" else None
    out: list[Step] = []
    for step in steps:
        out.append(step)
        if step.kind == "probs" and step.layer is None:
            place = anatomy.Place(cfg.arch, cfg.norm, stack, None, None, step.decode_step)
            out.extend(_pass_lens(loaded, place, by_id, head, final_norm, step, top_k, store_dtype))
    return out


def _pass_lens(loaded, place, by_id: dict[str, Step], head, final_norm, probs: Step, top_k: int,
               store_dtype: str | None = None) -> list[Step]:
    last = anatomy.last_layer(place.stack, place.t, by_id)
    if last is None:
        return []
    predictions = probs.extra.get("predictions")
    positions = [item["pos"] for item in predictions] if predictions else None
    token = loaded.tokenizer.token
    lens = []
    for layer in range(last + 1):
        at = anatomy.Place(place.arch, place.norm, place.stack, layer, None, place.t)
        output_id = anatomy.resolve("output", at, by_id)
        if output_id is None:
            continue
        residual = np.asarray(by_id[output_id].data)                      # [pos, d_model]
        rows = residual[positions] if positions is not None else residual[-1:]  # causal: the last position predicts
        values = _probabilities(rows, head, final_norm)
        if store_dtype is not None:
            values = values.astype(store_dtype)
        name = anatomy.step_name(place.stack, layer, f"hook_{LENS_KIND}")
        if positions is None:
            values = values[0]
            extra = {"top_k": _top(values, top_k, token)}
            lens.append(Step.from_array(anatomy.with_step(name, place.t), values, ("vocab",), extra=extra))
        else:
            tokens = by_id[output_id].labels.get("pos") or [str(p) for p in range(residual.shape[0])]
            extra = {"predictions": [
                {"pos": pos, "token": tokens[pos], "top_k": _top(values[i], top_k, token), "chosen": item.get("chosen")}
                for i, (pos, item) in enumerate(zip(positions, predictions))]}
            lens.append(Step.from_array(name, values, ("pos", "vocab"), {"pos": [tokens[p] for p in positions]}, extra))
    return lens


def _probabilities(rows: np.ndarray, head, final_norm) -> np.ndarray:
    """softmax(head(norm(x))) per row, in the model's own dtype and on its device. The run's taps
    are detached by now, so calling the norm and the head's modules records nothing."""
    weight = head.W_E.weight
    x = torch.from_numpy(np.ascontiguousarray(rows)).to(device=weight.device, dtype=weight.dtype)
    if final_norm is not None:
        x = final_norm(x)  # whatever norm the model has: layer norm, RMSNorm
    probs = head.unembed(x).softmax(dim=-1)
    return probs.float().cpu().numpy()


def _top(values: np.ndarray, k: int, token) -> list[dict]:
    order = np.argsort(-values, kind="stable")[:k]
    return [{"token": token(int(i)), "id": int(i), "prob": float(values[i])} for i in order]
