"""Trace training steps: the forward pass, the loss, the gradient at every tap, and each AdamW update.

One training step records, in the order it happens (every id ends in `@sN`, N the step from 1):

1. the forward pass, every tap as `tracer run` records it (`blocks.0.attn.hook_pattern@s1`);
2. the loss: `hook_targets` (the token, or class, each position must predict), `hook_token_losses`
   (−log p(target) per position) and `hook_loss` (their mean, shape [1]);
3. the backward pass: dL/d(value) at every tap on the loss path, named `<tap>.grad`
   (`blocks.0.attn.hook_pattern.grad@s1`), in the order autograd computes them — the reverse of
   the forward, as the chain rule goes. Each comes from a hook on the tapped tensor itself
   (`Tensor.register_hook`), which autograd calls once with the gradient summed over every use
   of the value (at a residual add, both branches). Taps that do not lead to a trained weight
   (token ids, masks, probabilities, anything before the first LoRA adapter) have none;
4. the update, per trained parameter in `named_parameters()` order: `<param>.value` (before),
   `.grad`, `.adam_m`, `.adam_v`, `.adam_m_hat`, `.adam_v_hat`, `.adam_step` and `.new`
   (`blocks.0.attn.W_Q.weight.adam_m@s1`), from tracer.train.adamw.

The model runs in eval mode (dropout off), so a seed fixes the whole run. The trace's `output`
holds `training`: the task, the loss before each step and after the last, the optimizer's
settings and the LoRA settings.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tracer.capture.recorder import Recorder, batched_to_host, host_array
from tracer.capture.run import device_label, record_pass
from tracer.errors import BadInput
from tracer.nn.classifier import ClassificationHead, encoder_hidden, load_head, valid_labels
from tracer.nn.loading import LoadedModel
from tracer.nn.lora import DEFAULT_TARGETS, add_lora
from tracer.trace import Step, Trace
from tracer.trace.step import PARAM_KINDS, parse_name
from tracer.train.adamw import AdamW, AdamWUpdate

MAX_STEPS = 100
# Each trained value is recorded eight times per step (value, grad, m, v, m̂, v̂, step, new), in
# float32: full fine-tuning of a large model for a few steps would fill the memory.
MAX_UPDATE_BYTES = 4 * 1024**3
TASKS = {"encoder-decoder": "translation", "decoder": "causal-lm", "encoder": "classification"}


@dataclass
class FinetuneRequest:
    """One example, what it should teach, and how to train on it."""

    text: str
    target: str | None = None            # translation: the target sentence
    label: str | None = None             # classification: the label of `text`
    labels: list[str] | None = None      # classification: every class, in order
    steps: int = 1
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    seed: int = 0
    lora_rank: int | None = None         # train rank-r adapters instead of all weights
    lora_alpha: float | None = None      # scale = alpha / rank (default alpha = rank)
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS


@dataclass
class FinetuneResult:
    trace: Trace
    losses: list[float]                  # the loss at each step, before its update
    loss_after: float                    # the loss after the last update
    model: nn.Module                     # the trained model (with its LoRA adapters, if any)
    head: ClassificationHead | None
    loaded: LoadedModel
    request: FinetuneRequest
    lora_modules: list[str] = field(default_factory=list)


@dataclass
class Example:
    """The tensors of one example and how to run the model on it."""

    task: str
    input: dict                           # the trace header's input
    target_ids: list[int]                 # what each loss position must predict
    target_labels: list[str]              # …as strings (tokens or class names)
    forward: Callable                     # forward(run) -> logits (n, classes); run(fn, own, source) runs fn


# -- the example ------------------------------------------------------------------------
def build_example(loaded: LoadedModel, request: FinetuneRequest, head: ClassificationHead | None) -> Example:
    tok, cfg, model, device = loaded.tokenizer, loaded.cfg, loaded.model, loaded.device
    task = TASKS[cfg.arch]
    ids, tokens = tok.encode(request.text)
    if not ids:
        raise BadInput("the text has no tokens this model knows")

    def tensor(seq):
        return torch.tensor([seq], dtype=torch.long, device=device)

    if task == "translation":
        target_ids, target_tokens = tok.encode(request.target)
        if not target_ids:
            raise BadInput("the target has no tokens this model knows")
        start = tok.bos_id if tok.bos_id is not None else 0   # as tracer.capture.run starts decoding
        if tok.eos_id is not None and target_ids[-1] != tok.eos_id:
            target_ids_end = target_ids + [tok.eos_id]        # the model must also learn to stop
        else:                                                 # (a tokenizer may append the end itself)
            target_ids_end = target_ids
        # teacher forcing: the decoder reads start + y and predicts y + end, one position ahead
        decoder_in, predict = [start] + target_ids_end[:-1], target_ids_end
        check_length(cfg, len(ids), "the text")
        check_length(cfg, len(decoder_in), "the target")
        src, tgt = tensor(ids), tensor(decoder_in)
        decoder_tokens = [tok.token(i) for i in decoder_in]

        def forward(run):
            memory = run(lambda: model.encode(src), tokens)
            return run(lambda: model.decode(tgt, memory, all_positions=True), decoder_tokens, tokens)[0]

        target = {"text": request.target, "tokens": target_tokens, "ids": target_ids}
        return Example(task, {"text": request.text, "tokens": tokens, "ids": ids, "target": target},
                       predict, [tok.token(i) for i in predict], forward)
    if task == "causal-lm":
        bos = getattr(tok, "decoder_bos_id", tok.bos_id)     # what `tracer run` puts before a decoder's text
        sequence = ([bos] if bos is not None else []) + ids
        if len(sequence) < 2:
            raise BadInput("a causal LM step needs at least two tokens: each one is predicted from those before it")
        check_length(cfg, len(sequence) - 1, "the text")
        inputs, predict = sequence[:-1], sequence[1:]
        own = [tok.token(i) for i in inputs]
        ids_in = tensor(inputs)

        def forward(run):
            return run(lambda: model(ids_in, all_positions=True), own)[0]

        target = {"text": request.text, "tokens": [tok.token(i) for i in predict], "ids": predict}
        return Example(task, {"text": request.text, "tokens": tokens, "ids": ids, "target": target},
                       predict, target["tokens"], forward)
    check_length(cfg, len(ids), "the text")
    label_id = head.labels.index(request.label)
    ids_in = tensor(ids)

    def forward(run):
        return run(lambda: head(encoder_hidden(model, ids_in)), tokens)                 # (1, labels)

    target = {"label": request.label, "id": label_id, "labels": head.labels, "position": 0}
    return Example(task, {"text": request.text, "tokens": tokens, "ids": ids, "target": target},
                   [label_id], [request.label], forward)


def check_length(cfg, n: int, what: str) -> None:
    if n > cfg.max_positions:
        raise BadInput(f"{what} is {n} tokens; the model has only {cfg.max_positions} positions")


# -- checking what was asked -------------------------------------------------------------
def validate_request(loaded: LoadedModel, request: FinetuneRequest) -> None:
    """Refuse what cannot be trained, in one line each (BadInput: exit 2)."""
    arch, name = loaded.cfg.arch, loaded.cfg.name
    task = TASKS.get(arch)
    if task is None:
        raise BadInput(f"tracer finetune cannot train a {arch!r} model")
    if not isinstance(request.text, str) or not request.text.strip():
        raise BadInput("the text is empty; give an example to train on")
    if task == "translation" and not (request.target or "").strip():
        raise BadInput(f"{name} translates: give the target sentence with --target TEXT")
    if task != "translation" and request.target is not None:
        raise BadInput(f"--target is for translation models; {name} is {arch_words(arch)}")
    if task != "classification" and (request.label is not None or request.labels is not None):
        raise BadInput(f"--label and --labels are for encoder models; {name} is {arch_words(arch)}")
    if task == "classification":
        if request.label is None:
            raise BadInput(f"{name} is an encoder: give the example's class with --label NAME (and --labels a,b)")
        if request.labels is not None and not valid_labels(request.labels):
            raise BadInput("--labels needs two or more distinct, non-empty names, e.g. --labels negative,positive")
        if request.labels is not None and request.label not in request.labels:
            raise BadInput(f"--label {request.label!r} is not one of --labels {','.join(request.labels)}")
    if not 1 <= request.steps <= MAX_STEPS:
        raise BadInput(f"--steps must be between 1 and {MAX_STEPS}, not {request.steps}")
    if not request.lr > 0 or not np.isfinite(request.lr):
        raise BadInput(f"--lr must be a positive number, not {request.lr}")
    if not request.weight_decay >= 0 or not np.isfinite(request.weight_decay):
        raise BadInput(f"--weight-decay must be zero or more, not {request.weight_decay}")
    if len(request.betas) != 2 or not all(0 <= b < 1 for b in request.betas):
        raise BadInput(f"--betas must be two numbers in [0, 1), e.g. 0.9,0.999, not {request.betas}")
    if not request.eps > 0:
        raise BadInput(f"--eps must be positive, not {request.eps}")
    if request.lora_rank is None and request.lora_alpha is not None:
        raise BadInput("--lora-alpha needs --lora R")
    if request.lora_alpha is not None and not request.lora_alpha > 0:
        raise BadInput(f"--lora-alpha must be positive, not {request.lora_alpha}")
    if request.lora_rank is not None and request.lora_rank < 1:
        raise BadInput(f"--lora must be a rank of at least 1, not {request.lora_rank}")
    if not request.lora_targets:
        raise BadInput("--lora-targets names no projection; e.g. W_Q,W_V")


def arch_words(arch: str) -> str:
    return {"decoder": "a decoder: its targets are the text's next tokens",
            "encoder": "an encoder: it learns --label NAME for the text",
            "encoder-decoder": "a translation model: it learns --target TEXT"}[arch]


def classification_head(loaded: LoadedModel, request: FinetuneRequest) -> ClassificationHead:
    """The folder's head if it has one (its labels must be the ones asked for), else a new one."""
    head = load_head(loaded.path, loaded.cfg.d_model)
    if head is not None:
        if request.labels is not None and request.labels != head.labels:
            raise BadInput(f"{loaded.path} has a head for labels {','.join(head.labels)}, not {','.join(request.labels)}")
        if request.label not in head.labels:
            raise BadInput(f"--label {request.label!r} is not one of the head's labels {','.join(head.labels)}")
    else:
        if request.labels is None:
            raise BadInput(f"{loaded.cfg.name} has no classification head yet: name the classes with --labels a,b")
        head = ClassificationHead(loaded.cfg.d_model, request.labels, seed=request.seed)
    dtype = next(loaded.model.parameters()).dtype
    return head.to(device=loaded.device, dtype=dtype)


# -- recording ---------------------------------------------------------------------------
class TrainingRecorder(Recorder):
    """A Recorder that also hooks each tapped tensor for its gradient (`Tensor.register_hook`).

    Tensor hooks, not module backward hooks: a tap's value is one tensor, and autograd calls
    its hook once, with dL/d(value) summed over every place the value is used. The recorders
    of one run share `grads`, so gradients keep the order autograd produced them in, and
    `hooked`, so a tensor seen by two taps (a pre-norm block's output is the next block's
    input) gets one hook that records the later tap first, as the chain rule reaches it.
    """

    def __init__(self, model: nn.Module, grads: list, hooked: dict, prefix: str = ""):
        super().__init__(model)
        self.grads, self.hooked, self.prefix = grads, hooked, prefix

    def record(self, name: str, value: torch.Tensor) -> None:
        name = self.prefix + name
        super().record(name, value)
        if not value.requires_grad:
            return
        seen = self.hooked.get(id(value))
        if seen is not None and seen[0] is value:
            seen[1].append(name)
            return
        names = [name]
        self.hooked[id(value)] = (value, names)  # holding the tensor keeps its id from being reused

        def hook(grad, names=names):
            grad = grad.detach().clone()  # cloned: autograd may hand the buffer on and add into it
            self.grads.extend((each, grad) for each in reversed(names))

        value.register_hook(hook)


def to_host(values: list[tuple[str, torch.Tensor]], batch: bool = True) -> list[tuple[str, np.ndarray]]:
    """Tensors -> numpy copies (batch axis dropped when `batch`), one packed copy per dtype on a device."""
    if not values:
        return []
    values = [(name, value.detach()[0] if batch else value.detach()) for name, value in values]
    if values[0][1].device.type == "cpu":
        return [(name, np.array(host_array(value), copy=True)) for name, value in values]
    return batched_to_host(values, pin=values[0][1].device.type == "cuda")


def forward_step(step: Step, s: int, source: list[str] | None) -> Step:
    """A recorded forward step (axes from the anatomy), owning its data, tagged @s."""
    parts = parse_name(step.name)
    data = np.array(step.data, copy=True)  # a copy: some taps are views of weights the update changes
    axes, tags = step.axes, dict(step.labels)
    if parts["module"] in ("W_K", "W_V") and parts["component"] == "cross_attn" and source is not None:
        tags = {"pos": source}  # a cross-attention key/value projection reads the source
    return Step.from_array(f"{step.name}@s{s}", data, axes, tags, step.extra)


def head_step(name: str, array: np.ndarray, s: int, labels: list[str]) -> Step:
    """A classification head's tap: `classifier.hook_cls` [d_model], `hook_class_logits`/`hook_class_probs` [label]."""
    if parse_name(name)["kind"] == "cls":
        return Step.from_array(f"{name}@s{s}", np.array(array, copy=True), ("d_model",))
    return Step.from_array(f"{name}@s{s}", np.array(array, copy=True), ("label",), {"label": labels})


def param_axes(name: str, shape: tuple[int, ...]) -> tuple[str, ...]:
    leaf = name.rsplit(".", 2)[-2:]
    module = leaf[0] if len(leaf) == 2 else ""
    if module in ("W_E", "W_U") and len(shape) == 2:
        return ("vocab", "d_model")
    if module == "W_pos" and len(shape) == 2:
        return ("position", "d_model")
    if module == "W_cls":
        return ("label", "d_model") if len(shape) == 2 else ("label",)
    if module == "lora_A":
        return ("rank", "d_in")
    if module == "lora_B":
        return ("d_out", "rank")
    if len(shape) == 2:
        return ("d_out", "d_in")
    if len(shape) == 1:
        return ("d_out",)
    return tuple(f"dim{i}" for i in range(len(shape)))


def update_steps(updates: list[AdamWUpdate], s: int, labels: list[str] | None) -> list[Step]:
    """Eight steps per parameter: value, grad, adam_m, adam_v, adam_m_hat, adam_v_hat, adam_step, new."""
    fields = {"value": "value", "grad": "grad", "adam_m": "m", "adam_v": "v", "adam_m_hat": "m_hat",
              "adam_v_hat": "v_hat", "adam_step": "step", "new": "new"}
    assert tuple(fields) == PARAM_KINDS
    values = [(f"{u.name}.{kind}", getattr(u, attr)) for u in updates for kind, attr in fields.items()]
    host = dict(to_host(values, batch=False))
    steps = []
    for u in updates:
        axes = param_axes(u.name, tuple(u.value.shape))
        tags = {"label": labels} if "label" in axes and labels else {}
        for kind in fields:
            extra = {"adam_t": u.t}
            if kind == "adam_m_hat":
                extra["bias_correction"] = u.bias_correction1
            elif kind == "adam_v_hat":
                extra["bias_correction"] = u.bias_correction2
            name = f"{u.name}.{kind}"
            steps.append(Step.from_array(f"{name}@s{s}", host[name], axes, tags, extra))
    return steps


# -- training ----------------------------------------------------------------------------
def finetune(loaded: LoadedModel, request: FinetuneRequest) -> FinetuneResult:
    """Train on one example for `request.steps` steps, recording every step; returns the trace.

    The loaded model is trained in place (wrapped with LoRA adapters first, if asked)."""
    validate_request(loaded, request)
    torch.manual_seed(request.seed)
    model = loaded.model
    model.eval()  # dropout off: the trace is what the weights compute, the same for a seed
    head = classification_head(loaded, request) if TASKS[loaded.cfg.arch] == "classification" else None
    lora_modules = []
    if request.lora_rank is not None:
        lora_modules = add_lora(model, request.lora_rank, request.lora_alpha, request.lora_targets, seed=request.seed)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    example = build_example(loaded, request, head)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if head is not None:
        named += [(f"classifier.{name}", p) for name, p in head.named_parameters()]
    check_update_size(named, request)
    optimizer = AdamW(named, lr=request.lr, betas=request.betas, eps=request.eps, weight_decay=request.weight_decay)
    device = loaded.device
    targets = torch.tensor(example.target_ids, dtype=torch.long, device=device)
    labels = head.labels if head is not None else None

    grads: list[tuple[str, torch.Tensor]] = []
    hooked: dict = {}
    recorder = TrainingRecorder(model, grads, hooked)
    head_recorder = TrainingRecorder(head, grads, hooked, prefix="classifier.") if head is not None else None
    steps: list[Step] = []
    losses: list[float] = []
    with contextlib.ExitStack() as hooks:
        hooks.enter_context(recorder.attached())
        if head_recorder is not None:
            hooks.enter_context(head_recorder.attached())
        for s in range(1, request.steps + 1):
            forward: list[Step] = []

            def run(fn, own, source=None):
                """Run one pass of the model (and the head), recording its taps."""
                out, recorded = record_pass(recorder, fn, own, source)
                forward.extend(forward_step(step, s, source) for step in recorded)
                if head_recorder is not None:  # the head runs last in the pass, so its taps come last
                    forward.extend(head_step(name, array, s, labels) for name, array in head_recorder.pass_values())
                return out

            optimizer.zero_grad()
            logits = example.forward(run)                                             # (n, classes)
            token_losses = F.cross_entropy(logits.float(), targets, reduction="none")  # (n,)
            loss = token_losses.mean()
            steps.extend(forward)
            steps.extend(loss_steps(example, targets, token_losses, loss, s))
            grads.clear()
            loss.backward()
            by_name = {step.name: step for step in forward}
            for name, array in to_host(grads):
                seen = by_name[name]
                steps.append(Step.from_array(f"{name}.grad@s{s}", array, seen.axes, seen.labels))
            grads.clear()
            hooked.clear()
            steps.extend(update_steps(optimizer.step(), s, labels))
            losses.append(float(loss.detach()))
    with torch.no_grad():
        logits = example.forward(lambda fn, own, source=None: fn())
        loss_after = float(F.cross_entropy(logits.float(), targets))
    optimizer.zero_grad()
    trace = Trace(
        steps,
        model={"name": loaded.cfg.name, "arch": loaded.cfg.arch, "config": loaded.cfg.to_dict(),
               "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")},
        device=device_label(device),
        input=example.input,
        output={"text": f"loss {losses[0]:.4f} → {loss_after:.4f} after {request.steps} step{'s' if request.steps > 1 else ''}",
                "tokens": example.target_labels, "ids": example.target_ids,
                "training": training_header(example, request, losses, loss_after, named, lora_modules, labels)},
    )
    return FinetuneResult(trace, losses, loss_after, model, head, loaded, request, lora_modules)


def check_update_size(named, request: FinetuneRequest) -> None:
    values = sum(p.numel() for _, p in named)
    size = values * len(PARAM_KINDS) * 4 * request.steps
    if size > MAX_UPDATE_BYTES:
        raise BadInput(f"recording {request.steps} update(s) of {values:,} trained values would take "
                       f"{size / 1024**3:.1f} GB (the limit is {MAX_UPDATE_BYTES / 1024**3:.0f} GB); "
                       "train LoRA adapters (--lora R) or fewer --steps")


def loss_steps(example: Example, targets, token_losses, loss, s: int) -> list[Step]:
    host = dict(to_host([("hook_targets", targets), ("hook_token_losses", token_losses), ("hook_loss", loss)], batch=False))
    pos = {"pos": example.target_labels}
    return [
        Step.from_array(f"hook_targets@s{s}", host["hook_targets"], ("pos",), pos),
        Step.from_array(f"hook_token_losses@s{s}", host["hook_token_losses"], ("pos",), pos),
        # [1], not a 0-d scalar: the JSON export writes a 0-d array as a list of one
        Step.from_array(f"hook_loss@s{s}", host["hook_loss"].reshape(1), ("value",)),
    ]


def training_header(example, request, losses, loss_after, named, lora_modules, labels) -> dict:
    return {
        "task": example.task,
        "steps": request.steps,
        "losses": losses,
        "loss_before": losses[0],
        "loss_after": loss_after,
        "optimizer": {"name": "AdamW", "lr": request.lr, "betas": list(request.betas), "eps": request.eps,
                      "weight_decay": request.weight_decay},
        "seed": request.seed,
        "trained_parameters": [name for name, _ in named],
        "trained_values": int(sum(p.numel() for _, p in named)),
        "lora": None if request.lora_rank is None else {
            "rank": request.lora_rank, "alpha": float(request.lora_alpha or request.lora_rank),
            "scale": float(request.lora_alpha or request.lora_rank) / request.lora_rank,
            "targets": list(request.lora_targets), "modules": lora_modules,
        },
        "labels": labels,
    }


def example_loss(loaded: LoadedModel, request: FinetuneRequest) -> float:
    """The loss of a model folder on an example, untraced (for checking a saved model)."""
    head = classification_head(loaded, request) if TASKS[loaded.cfg.arch] == "classification" else None
    example = build_example(loaded, request, head)
    targets = torch.tensor(example.target_ids, dtype=torch.long, device=loaded.device)
    with torch.no_grad():
        return float(F.cross_entropy(example.forward(lambda fn, own, source=None: fn()).float(), targets))


__all__ = ["FinetuneRequest", "FinetuneResult", "finetune", "example_loss"]
