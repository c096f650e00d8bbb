"""Measurements on held-out splits: what each MODEL.md reports."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tracer.train.data import IGNORE, lm_batch, mask_tokens, pad, translation_batch
from tracer.train.language import BE_PAST, BE_PRESENT, ENGLISH_VERBS


@torch.no_grad()
def greedy_translate(model, sources: list[list[int]], bos: int, eos: int, pad_id: int,
                     max_len: int = 60, batch_size: int = 250) -> list[list[int]]:
    """Batched greedy decoding, the same procedure as `tracer run` (start at [bos], stop at [eos])."""
    model.eval()
    outputs = []
    for start in range(0, len(sources), batch_size):
        src, src_mask = pad(sources[start:start + batch_size], pad_id)
        memory = model.encode(src, src_mask)                                        # (B, S, d)
        seq = torch.full((len(src), 1), bos, dtype=torch.long)
        done = torch.zeros(len(src), dtype=torch.bool)
        for _ in range(max_len):
            logits = model.decode(seq, memory, None, src_mask)                      # (B, V) last position
            nxt = logits.argmax(-1)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == eos
            if done.all():
                break
        for row in seq[:, 1:].tolist():
            outputs.append(row[: row.index(eos)] if eos in row else row)
    return outputs


def exact_match(model, tokenizer, pairs: list[tuple[str, str]], ids) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of sentences translated exactly right, and the ones that were not."""
    sources = [list(e.ids) for e in tokenizer.encode_batch([g for g, _ in pairs], add_special_tokens=False)]
    outputs = greedy_translate(model, sources, ids["bos"], ids["eos"], ids["pad"])
    wrong = []
    for (german, english), out in zip(pairs, outputs):
        got = tokenizer.decode(out, skip_special_tokens=True)
        if " ".join(got.split()) != english:
            wrong.append((german, english, got))
    return 1 - len(wrong) / max(1, len(pairs)), wrong


@torch.no_grad()
def translation_token_accuracy(model, examples, ids, batch_size: int = 250) -> float:
    """Teacher-forced next-token accuracy (cheap; shown on the progress bar)."""
    model.eval()
    right = total = 0
    for start in range(0, len(examples), batch_size):
        src, src_mask, tgt_in, tgt_mask, target = translation_batch(
            examples[start:start + batch_size], ids["pad"], ids["bos"], ids["eos"])
        pred = model(src, tgt_in, src_mask, tgt_mask).argmax(-1)
        keep = target != IGNORE
        right += int((pred[keep] == target[keep]).sum())
        total += int(keep.sum())
    model.train()
    return right / max(1, total)


@torch.no_grad()
def lm_metrics(model, rows: list[list[int]], ids, batch_size: int = 250) -> dict:
    """Next-token accuracy and perplexity of a decoder-only model."""
    model.eval()
    right = total = 0
    nll = 0.0
    for start in range(0, len(rows), batch_size):
        inputs, mask, target = lm_batch(rows[start:start + batch_size], ids["pad"], ids["bos"], ids["eos"])
        logits = model(inputs, padding=mask, all_positions=True)
        keep = target != IGNORE
        nll += float(F.cross_entropy(logits[keep], target[keep], reduction="sum"))
        right += int((logits.argmax(-1)[keep] == target[keep]).sum())
        total += int(keep.sum())
    model.train()
    return {"accuracy": right / max(1, total), "perplexity": math.exp(nll / max(1, total))}


@torch.no_grad()
def mlm_metrics(model, rows: list[list[int]], ids, vocab: list[int], seed: int, batch_size: int = 250) -> dict:
    """Top-1 / top-5 accuracy at masked positions (BERT's 15% masking, fixed seed)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    right = right5 = total = 0
    for start in range(0, len(rows), batch_size):
        inputs, mask, target = mask_tokens(rows[start:start + batch_size], ids["pad"], ids["mask"], vocab, generator)
        logits = model(inputs, padding=mask)
        keep = target != IGNORE
        top5 = logits[keep].topk(5, dim=-1).indices
        right += int((top5[:, 0] == target[keep]).sum())
        right5 += int((top5 == target[keep][:, None]).any(-1).sum())
        total += int(keep.sum())
    model.train()
    return {"accuracy": right / max(1, total), "top5": right5 / max(1, total)}


# -- agreement: does the predicted verb agree with its subject? ---------------------------------

def verb_forms(person: int) -> set[str]:
    """English verb forms that agree with a subject of this person (any tense)."""
    forms = {BE_PRESENT[person], BE_PAST[person]}
    for base, third, past in ENGLISH_VERBS.values():
        forms |= {third if person == 2 else base, past}
    return forms


ALL_VERBS = set().union(*(verb_forms(p) for p in range(6)))
CLAUSE_START = {"and", "but", "because"}


def verb_slots(words: list[str]) -> list[tuple[int, int]]:
    """(word index of a verb, person of its subject) for every clause of an English sentence."""
    slots, start = [], 0
    for i, word in enumerate(words):
        if word in CLAUSE_START:
            start = i + 1
        elif word in ALL_VERBS and i > start and not any(w in ALL_VERBS for w in words[start:i]):
            first = words[start]
            person = {"i": 0, "you": 1, "we": 3, "they": 5}.get(first, 2)
            slots.append((i, person))
    return slots


@torch.no_grad()
def agreement(model, tokenizer, sentences: list[str], objective: str, ids) -> float:
    """Share of verb positions where the model's top word is a verb form agreeing with the subject.

    GPT: predict the verb from the words before it. BERT: the verb is replaced by [MASK].
    Which verb is free (the cat sees / drinks / is); its agreement is not.
    """
    model.eval()
    right = total = 0
    for sentence in sentences:
        words = sentence.split()
        for index, person in verb_slots(words):
            if objective == "next-token":
                prefix = [ids["bos"]] + list(tokenizer.encode(" ".join(words[:index]), add_special_tokens=False).ids)
                logits = model(torch.tensor([prefix]))[0]
            else:
                masked = words[:index] + ["[MASK]"] + words[index + 1:]
                row = list(tokenizer.encode(" ".join(masked), add_special_tokens=False).ids)
                logits = model(torch.tensor([row]))[0, row.index(ids["mask"])]
            word = tokenizer.id_to_token(int(logits.argmax()))
            right += word in verb_forms(person)
            total += 1
    model.train()
    return right / max(1, total)
