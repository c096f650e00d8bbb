"""`tracer train MODEL`: corpus, tokenizer, training with a progress bar, evaluation, model folder."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tracer.errors import BadInput, TracerError
from tracer.nn.loading import save_model
from tracer.nn.model import build_model
from tracer.train import evaluate
from tracer.train.corpus import DEFAULT_SEED, TRAIN_SIZE, build_corpus
from tracer.train.data import IGNORE, Batches, build_tokenizer, encode_all, lm_batch, mask_tokens, translation_batch
from tracer.train.model_card import write_model_card
from tracer.train.recipes import RECIPES, Recipe

VAL_EVERY_FRACTION = 20     # validate this many times per run
VAL_SENTENCES = 500         # validation sentences scored on the progress bar


@dataclass
class TrainResult:
    name: str
    folder: Path
    steps: int
    seed: int
    seconds: float
    parameters: int
    weight_bytes: int
    corpus_sizes: dict
    metrics: dict = field(default_factory=dict)
    samples: list = field(default_factory=list)
    errors: list = field(default_factory=list)


MODEL_FILES = ("tokenizer.json", "config.json", "model.safetensors", "MODEL.md")
TRAINED_DIR = Path("trained")   # where a model is written without --out, under the current folder


def bundled_folder(name: str) -> Path:
    """The model tracer ships as `name` (models/NAME in the project)."""
    return Path(__file__).resolve().parents[2] / "models" / name


def new_folder(name: str, parent: Path = TRAINED_DIR) -> Path:
    """`trained/NAME`, else `trained/NAME-2`, `-3` …: the first that does not exist yet."""
    folder, number = parent / name, 2
    while folder.exists() or folder.is_symlink():
        folder, number = parent / f"{name}-{number}", number + 1
    return folder


def destination(name: str, out: str | Path | None = None, force: bool = False) -> Path:
    """Where `train` writes: `out`, or a new folder. A folder that already holds a model (a
    bundled one above all) is replaced only with `force`."""
    if out is None:
        return new_folder(name)
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"--out {folder} is a file, not a folder")
    if not force and folder.is_dir() and any((folder / file).exists() for file in MODEL_FILES):
        bundled = folder.resolve() == bundled_folder(folder.name).resolve()
        what = "the model bundled with tracer" if bundled else "a model"
        raise BadInput(f"--out {folder} already holds {what}; add --force to replace it, or choose a new folder")
    return folder


def train(name: str, out: str | Path | None = None, force: bool = False, **kwargs) -> TrainResult:
    """Train a model from its recipe into `destination(name, out, force)`; deterministic for a
    given seed and step count.

    Work happens in a hidden folder beside the destination, so an interrupted run never leaves
    a model folder whose tokenizer does not match its weights.
    """
    if name not in RECIPES:
        raise BadInput(f"unknown model {name!r}: tracer can train {', '.join(RECIPES)}")
    folder = destination(name, out, force)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-training-", dir=folder.parent))
    except OSError as exc:
        raise TracerError(f"cannot write to {folder.parent}: {exc.strerror or exc}") from None
    threads = torch.get_num_threads()
    try:
        return _train(name, folder, work, **kwargs)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)


def _train(name: str, folder: Path, work: Path, steps: int | None = None, seed: int = DEFAULT_SEED,
           eval_size: int | None = None, console=None, progress: bool = True) -> TrainResult:
    from rich.console import Console

    recipe = RECIPES[name]
    steps = recipe.steps if steps is None else steps
    if steps < 1:
        raise BadInput(f"--steps must be at least 1, not {steps}")
    if eval_size is not None and eval_size < 1:
        raise BadInput(f"--eval-size must be at least 1, not {eval_size}")
    console = console or Console()
    started, cpu_started = time.perf_counter(), time.process_time()
    # These matrices are small: a second thread saves little, and when the cores are busy with
    # other work, OpenMP threads waiting on each other made steps ten times slower (measured).
    torch.set_num_threads(1)
    torch.manual_seed(seed)

    # One epoch of fresh sentences covers the whole run (a short smoke run needs only a few).
    train_size = min(TRAIN_SIZE, max(2_000, steps * recipe.batch_size))
    with console.status("generating the corpus and training the tokenizer"):
        corpus = build_corpus(seed, train_size=train_size)
        cfg = dataclasses.replace(recipe.cfg)
        tokenizer = build_tokenizer(corpus, cfg, work / "tokenizer.json")
        cfg.vocab_size = tokenizer.get_vocab_size()
        cfg.validate()
    ids = {key: tokenizer.token_to_id(getattr(cfg, f"{key}_token")) for key in ("pad", "bos", "eos", "unk", "mask")}
    test = corpus.test if eval_size is None else corpus.test[:eval_size]
    sizes = {"train": len(corpus.train), "validation": len(corpus.val), "test": len(corpus.test),
             "train_names": len(corpus.train_names), "test_names": len(corpus.test_names)}

    model = build_model(cfg)
    _initialise(model, cfg)
    model.train()
    step_fn, validate = _objective(recipe, model, corpus, tokenizer, ids, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.98), weight_decay=recipe.weight_decay)
    warmup = min(recipe.warmup, max(1, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, steps))
    val_every = max(25, steps // VAL_EVERY_FRACTION)

    loss_avg, val_acc = None, float("nan")
    columns = _progress_columns()
    from rich.progress import Progress

    loop_started = time.perf_counter()
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task(f"training {name}", total=steps, loss=float("nan"), val=float("nan"))
        for step in range(1, steps + 1):
            loss = step_fn()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
            if step % val_every == 0 or step == steps:
                val_acc = validate()
                if progress and not console.is_terminal:  # a log file gets a line instead of a bar
                    console.print(f"step {step}/{steps}  loss {loss_avg:.3f}  val acc {val_acc:.1%}  "
                                  f"{time.perf_counter() - started:.0f}s")
            bar.update(task, advance=1, loss=loss_avg, val=val_acc)
    train_seconds = time.perf_counter() - loop_started

    model.eval()
    result = TrainResult(name, work, steps, seed, 0.0, sum(p.numel() for p in model.parameters()), 0, sizes)
    with console.status(f"measuring on {len(test)} test sentences"):
        _measure(result, recipe, model, tokenizer, corpus, test, ids, seed)
    save_model(model, cfg, work / "tokenizer.json", work)
    result.weight_bytes = (work / "model.safetensors").stat().st_size
    result.seconds = time.perf_counter() - started
    result.metrics["train_seconds"] = train_seconds
    result.metrics["cpu_seconds"] = time.process_time() - cpu_started
    result.metrics["machine"] = f"{platform.machine()}, torch {torch.__version__}, one thread"
    write_model_card(result, recipe, cfg)
    result.folder = _publish(work, folder)
    return result


def _publish(work: Path, folder: Path) -> Path:
    """Move the finished files into place; until now the old model (if any) was untouched."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        os.replace(work / name, folder / name)
    return folder


def _initialise(model, cfg) -> None:
    """Xavier for the linear layers (as the paper's reference code); token embeddings at
    std 1/sqrt(d_model) when they are scaled up by sqrt(d_model), else GPT's 0.02, so the
    tied output layer starts with logits near zero."""
    for name, param in model.named_parameters():
        if name.endswith("W_E.weight"):
            torch.nn.init.normal_(param, std=cfg.d_model ** -0.5 if cfg.scale_embeddings else 0.02)
        elif name.endswith("W_pos.weight"):
            torch.nn.init.normal_(param, std=0.02)
        elif param.dim() == 2:
            torch.nn.init.xavier_uniform_(param)
        elif name.endswith(".bias") and "ln" not in name:
            torch.nn.init.zeros_(param)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _progress_columns():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("val acc {task.fields[val]:.1%}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )


def _objective(recipe: Recipe, model, corpus, tokenizer, ids, seed: int):
    """(one training step's loss, validation accuracy) for the recipe's objective."""
    batch_size = recipe.batch_size
    if recipe.objective == "translate":
        def pairs(split):
            german = encode_all(tokenizer, [g for g, _ in split])
            english = encode_all(tokenizer, [e for _, e in split])
            return list(zip(german, english))

        train_examples, val_examples = pairs(corpus.train), pairs(corpus.val[:VAL_SENTENCES])
        batches = Batches(train_examples, batch_size, seed)

        def step():
            src, src_mask, tgt_in, tgt_mask, target = translation_batch(batches.next(), ids["pad"], ids["bos"], ids["eos"])
            logits = model(src, tgt_in, src_mask, tgt_mask)                          # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)

        return step, lambda: evaluate.translation_token_accuracy(model, val_examples, ids)

    train_rows = encode_all(tokenizer, corpus.english("train"))
    val_rows = encode_all(tokenizer, corpus.english("val")[:VAL_SENTENCES])
    batches = Batches(train_rows, batch_size, seed)
    if recipe.objective == "next-token":
        def step():
            inputs, mask, target = lm_batch(batches.next(), ids["pad"], ids["bos"], ids["eos"])
            logits = model(inputs, padding=mask, all_positions=True)                 # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)

        return step, lambda: evaluate.lm_metrics(model, val_rows, ids)["accuracy"]

    vocab = _maskable_vocab(tokenizer, ids)
    generator = torch.Generator().manual_seed(seed + 7)

    def step():
        inputs, mask, target = mask_tokens(batches.next(), ids["pad"], ids["mask"], vocab, generator)
        logits = model(inputs, padding=mask)                                         # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=IGNORE)

    return step, lambda: evaluate.mlm_metrics(model, val_rows, ids, vocab, seed + 11)["accuracy"]


def _maskable_vocab(tokenizer, ids) -> list[int]:
    specials = set(ids.values())
    return [i for i in range(tokenizer.get_vocab_size()) if i not in specials]


def _measure(result: TrainResult, recipe: Recipe, model, tokenizer, corpus, test, ids, seed: int) -> None:
    if recipe.objective == "translate":
        accuracy, wrong = evaluate.exact_match(model, tokenizer, test, ids)
        result.metrics.update(exact_match=accuracy, test_sentences=len(test))
        result.errors = wrong[:10]
        return
    rows = encode_all(tokenizer, [e for _, e in test])
    sentences = [e for _, e in test[:300]]
    if recipe.objective == "next-token":
        result.metrics.update(evaluate.lm_metrics(model, rows, ids))
        result.metrics["agreement"] = evaluate.agreement(model, tokenizer, sentences, "next-token", ids)
        for prompt in ("the cat drank the", "i am", "the teacher", "my name is", "we saw a"):
            prefix = [ids["bos"]] + list(tokenizer.encode(prompt, add_special_tokens=False).ids)
            with torch.no_grad():
                for _ in range(20):
                    nxt = int(model(torch.tensor([prefix]))[0].argmax())
                    if nxt == ids["eos"]:
                        break
                    prefix.append(nxt)
            result.samples.append((prompt, tokenizer.decode(prefix, skip_special_tokens=True)))
    else:
        vocab = _maskable_vocab(tokenizer, ids)
        result.metrics.update(evaluate.mlm_metrics(model, rows, ids, vocab, seed + 13))
        result.metrics["agreement"] = evaluate.agreement(model, tokenizer, sentences, "masked-lm", ids)
        for text in ("the cat drank the [MASK]", "i [MASK] tired", "they [MASK] the book",
                     "the woman ate [MASK] apple", "the man drank the milk because [MASK] was thirsty"):
            row = list(tokenizer.encode(text, add_special_tokens=False).ids)
            with torch.no_grad():
                logits = model(torch.tensor([row]))[0]
            filled = [tokenizer.id_to_token(int(logits[i].argmax())) if t == ids["mask"] else tokenizer.id_to_token(t)
                      for i, t in enumerate(row)]
            result.samples.append((text, " ".join(filled)))
