"""Shared pieces of the parity tests against transformers (a test oracle only: tracer never imports it).

Each test builds a tiny random model with transformers from a config and a fixed seed, widens its
weights so that a wrong formula shows (at the default 0.02 init an erf-vs-tanh GELU mix-up moves
the output by only ~5e-6), saves it with `save_pretrained` (safetensors), reads the files back
without transformers, converts them with `tracer.nn.convert`, and runs both models in float64.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tracer.nn.convert import Converted
from tracer.nn.hooks import hooks_attached
from tracer.nn.model import build_model

transformers = pytest.importorskip(
    "transformers", reason="transformers is the parity oracle (the dev extra); install it to run these tests"
)

TOLERANCE = 1e-10
N_TOKENS = 24          # input length (at least 20)
N_NEW = 24             # greedy decoding steps compared with generate() (at least 20)
NORM_NAMES = ("norm", "ln_", "layernorm")


def widen(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights with std 0.3, norm weights 1 ± 0.2, every bias random; the default init hides mistakes."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            lowered = name.lower()
            if param.ndim == 1 and any(part in lowered for part in NORM_NAMES) and lowered.endswith("weight"):
                param.copy_(1 + 0.2 * (2 * torch.rand(param.shape, generator=generator, dtype=torch.float64) - 1))
            else:
                param.copy_(0.3 * noise)


def make_hf(model_class, config, seed: int = 0):
    """A transformers model from `config`, widened, in float64, eager attention, eval mode."""
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_class(config)
    widen(model, seed)
    return model.to(torch.float64).eval()


def save_and_read(model, folder: Path) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """save_pretrained (safetensors) plus a word-level tokenizer, then read config.json and the weights
    back without transformers. The folder is loadable by tracer's own loader too."""
    model.save_pretrained(folder)
    assert not list(folder.glob("*.bin")), "save_pretrained wrote a pickle"
    save_word_tokenizer(folder, model.config.vocab_size)
    hf_config = json.loads((folder / "config.json").read_text())
    return hf_config, load_file(str(folder / "model.safetensors")), folder


def save_word_tokenizer(folder: Path, vocab_size: int) -> None:
    """A tokenizer whose words are the tiny vocabulary's ids ("t0 t17 …" -> [0, 17, …]), no special
    tokens added, saved as transformers saves one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(str(folder))


def as_text(ids: torch.Tensor) -> str:
    """The text the word-level tokenizer turns back into `ids`."""
    return " ".join(f"t{i}" for i in ids[0].tolist())


def load_folder(folder: Path):
    """The folder as tracer loads it (hf_folder, converter, tokenizer), in float64."""
    from tracer.nn.loading import load_model

    return load_model(folder, dtype=torch.float64)


def tracer_generate(folder: Path, ids: torch.Tensor, n_new: int) -> list[int]:
    """tracer's own greedy decoding (tracer.capture.run.generate) on the folder as tracer loads it."""
    from tracer.capture.run import generate

    loaded = load_folder(folder)
    result = generate(loaded, as_text(ids), max_new_tokens=n_new)
    assert result.input_ids == ids[0].tolist()
    return result.output_ids


def tracer_model(converted: Converted) -> torch.nn.Module:
    model = build_model(converted.cfg)
    model.load_state_dict(converted.state_dict, strict=True)
    return model.to(torch.float64).eval()


@torch.no_grad()
def run_traced(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's output and every tap's value (batch axis kept)."""
    taps: dict[str, torch.Tensor] = {}
    with hooks_attached(model, lambda name, value: taps.__setitem__(name, value.detach().clone())):
        out = model(ids)
    return out, taps


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


def input_ids(vocab_size: int, seed: int = 1, n: int = N_TOKENS) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, n), generator=generator)


@torch.no_grad()
def hf_greedy(model, ids: torch.Tensor, n_new: int) -> list[int]:
    model.generation_config.eos_token_id = None        # never stop early: compare every step
    model.generation_config.pad_token_id = 0
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                         do_sample=False, num_beams=1)
    return out[0, ids.shape[1]:].tolist()




def hidden_state_taps(n_layers: int, last: str) -> list[str]:
    """The tap matching each of transformers' hidden states: the embeddings entering layer 0, each
    layer's output (the next layer's input), and for the last one `last` (after the final norm in a
    pre-norm model, the last layer's ln2 in a post-norm one)."""
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [last]


def parity(hf_out, taps: dict[str, torch.Tensor], last: str) -> dict[str, float]:
    """max |Δ| of every hidden state and every attention pattern against tracer's taps."""
    names = hidden_state_taps(len(hf_out.attentions), last)
    assert len(hf_out.hidden_states) == len(names)
    diffs = {name: max_diff(hidden, taps[name]) for name, hidden in zip(names, hf_out.hidden_states)}
    for layer, pattern in enumerate(hf_out.attentions):
        name = f"blocks.{layer}.attn.hook_pattern"
        diffs[name] = max_diff(pattern, taps[name])
    return diffs


def assert_within(diffs: dict[str, float], bound: float = TOLERANCE) -> None:
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= bound, f"{worst} differs from transformers by {diffs[worst]:.3g}"


def traced_and_checked(folder: Path, ids: torch.Tensor, max_new_tokens: int | None = None):
    """The folder traced as `tracer run` traces it (loader, tokenizer, capture), and `tracer check`'s
    verdict on that trace, which must pass with nothing skipped."""
    from tracer.capture.run import trace_text
    from tracer.trace.check import check_trace

    trace = trace_text(load_folder(folder), as_text(ids), max_new_tokens=max_new_tokens)
    assert trace.input["ids"] == ids[0].tolist()
    report = check_trace(trace)
    assert report.ok and not report.skipped, (report.failures[:3], report.skipped[:3])
    return trace


def trace_parity(trace, hf_out, at: str = "", logits=None) -> dict[str, float]:
    """max |Δ| of the trace's attention patterns (and logits) against transformers' (batch 1)."""
    diffs = {}
    for layer, pattern in enumerate(hf_out.attentions):
        name = f"blocks.{layer}.attn.hook_pattern{at}"
        diffs[name] = max_diff(torch.as_tensor(trace[name]), pattern[0])
    if logits is not None:
        diffs["logits"] = max_diff(torch.as_tensor(trace[f"hook_logits{at}"]), logits)
    return diffs
