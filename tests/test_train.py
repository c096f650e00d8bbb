"""The corpus speaks the language of issue 3, and `tracer train` rebuilds a model that loads and traces."""

from __future__ import annotations

import random

import pytest
from click.testing import CliRunner

from tracer.cli import cli
from tracer.train.corpus import build_corpus, build_test_split, normalize
from tracer.train.language import LEXICON, LanguageGenerator, make_names


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(train_size=20_000)


def test_corpus_is_deterministic():
    assert build_corpus(train_size=2_000).train == build_corpus(train_size=2_000).train
    assert build_corpus(seed=1, train_size=2_000).train != build_corpus(train_size=2_000).train


def test_held_out_splits_do_not_depend_on_training_size(corpus):
    assert build_test_split()[0] == corpus.test
    assert build_corpus(train_size=2_000).val == corpus.val


def test_test_names_and_sentences_are_unseen(corpus):
    assert not set(corpus.test_names) & set(corpus.train_names)
    train_words = {w for german, _ in corpus.train for w in normalize(german).split()}
    unseen = [n for n in corpus.test_names if n not in train_words]
    assert len(unseen) == len(corpus.test_names)
    train_keys = {normalize(g) for g, _ in corpus.train}
    assert not any(normalize(g) in train_keys for g, _ in corpus.test + corpus.val)


def test_names_are_latin_pseudo_words():
    names = make_names(random.Random(0), 2_000)
    assert all(2 <= len(n) <= 12 and n.isascii() and n.isalpha() and n.islower() for n in names)
    assert not set(names) & LEXICON


def test_english_side_is_lowercase_without_punctuation(corpus):
    for _, english in corpus.train[:5_000]:
        assert english == english.lower() and "," not in english and "." not in english


def test_german_surface_varies(corpus):
    germans = [g for g, _ in corpus.train[:5_000]]
    assert any(g.endswith(".") for g in germans) and any(not g.endswith(".") for g in germans)
    assert any(", weil" in g for g in germans) and any(" weil" in g and ", weil" not in g for g in germans)
    assert any(g[0].isupper() for g in germans)


def test_grammar(corpus):
    pairs = {normalize(g): e for g, e in corpus.train}
    # agreement, and "an" before a vowel
    for german, english in pairs.items():
        words = german.split()
        if words[:2] == ["ich", "bin"]:
            assert english.startswith("i am ")
        if words[:2] == ["sie", "sind"]:
            assert english.startswith("they are ")
        if words[:2] == ["sie", "ist"]:
            assert english.startswith("she is ")
        if words[:2] == ["ihr", "wart"]:
            assert english.startswith("you were ")
        if words[:2] == ["er", "trinkt"]:
            assert english.startswith("he drinks ")
        if words[:2] == ["ich", "heiße"]:
            assert english.startswith(f"my name is {words[2]}")
        if "einen apfel" in german or "ein apfel" in german:
            assert "an apple" in english
        if "den" in words:
            assert words[words.index("den") + 1] in ("hund", "mann", "lehrer", "apfel")
    # the weil clause: pronoun by antecedent
    weil = {g: e for g, e in pairs.items() if " weil " in g}
    assert len(weil) > 1_000
    for german, english in weil.items():
        main, clause = german.split(" weil ")
        subject = main.split()[1] if main.split()[0] in ("der", "die", "das", "ein", "eine") else main.split()[0]
        obj = main.split()[-1]
        pronoun, _, *rest = clause.split()
        en_pronoun = english.split(" because ")[1].split()[0]
        if pronoun == "er" and "mann" in (subject, obj) and "lehrer" not in (subject, obj):
            assert en_pronoun in ("he", "it")
        if pronoun == "sie" and clause.split()[-1] in ("ist", "war") and "frau" not in main.split() and subject != "sie":
            assert en_pronoun == "it", (german, english)
        if pronoun in ("ich", "wir", "ihr"):
            assert en_pronoun == {"ich": "i", "wir": "we", "ihr": "you"}[pronoun]
        if pronoun == "sie" and clause.split()[-1] in ("sind", "waren"):
            assert en_pronoun == "they"


def test_generator_reproduces_issue_examples():
    generator = LanguageGenerator(0, ["piyush"])
    seen = {normalize(g): e for g, e in (generator.pair() for _ in range(20_000))}
    assert seen.get("die katze trank die milch weil sie hungrig war") in (None, "the cat drank the milk because it was hungry")
    assert seen["ich bin piyush"] == "i am piyush"


@pytest.mark.parametrize("name, text", [
    ("de-en-tiny", "ich bin piyush"),
    ("en-gpt-tiny", "the cat drank the"),
    ("en-bert-tiny", "the cat drank the [MASK]"),
])
def test_train_smoke_run(tmp_path, name, text):
    """A few steps of the real recipe: the folder it writes loads, runs and traces."""
    from tracer.capture.run import trace_text
    from tracer.nn.loading import load_model
    from tracer.trace.check import check_trace

    out = tmp_path / name
    result = CliRunner().invoke(cli, ["train", name, "--out", str(out), "--steps", "8", "--eval-size", "10"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "MODEL.md"}
    assert "Measured on the test split" in (out / "MODEL.md").read_text()
    trace = trace_text(load_model(str(out)), text, max_new_tokens=5)
    assert check_trace(trace).ok


def test_train_refuses_unknown_model():
    result = CliRunner().invoke(cli, ["train", "gpt-5"])
    assert result.exit_code == 2


def folder_bytes(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def test_train_without_out_leaves_the_bundled_model_byte_identical(tmp_path, monkeypatch):
    """It used to write over models/de-en-tiny (a 3-step model that translates nothing)."""
    from tracer.train.trainer import bundled_folder

    bundled = bundled_folder("de-en-tiny")
    before = folder_bytes(bundled)
    monkeypatch.chdir(tmp_path)
    args = ["train", "de-en-tiny", "--steps", "2", "--eval-size", "2"]
    first, second = CliRunner().invoke(cli, args), CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert folder_bytes(bundled) == before
    assert "training de-en-tiny into trained/de-en-tiny (the bundled model is left as it is)" in first.output
    assert "into trained/de-en-tiny-2" in second.output  # a second run does not replace the first either
    for folder in ("de-en-tiny", "de-en-tiny-2"):
        assert (tmp_path / "trained" / folder / "model.safetensors").is_file()


def test_train_replaces_a_model_only_with_force(tmp_path):
    from tracer.train.trainer import bundled_folder

    bundled = bundled_folder("de-en-tiny")
    before = folder_bytes(bundled)
    refused = CliRunner().invoke(cli, ["train", "de-en-tiny", "--out", str(bundled), "--steps", "2"])
    assert refused.exit_code == 2
    assert "already holds the model bundled with tracer; add --force to replace it" in refused.output
    assert folder_bytes(bundled) == before

    out = tmp_path / "mine"
    args = ["train", "de-en-tiny", "--out", str(out), "--steps", "2", "--eval-size", "2"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    first = folder_bytes(out)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "already holds a model; add --force" in again.output
    assert folder_bytes(out) == first
    replaced = CliRunner().invoke(cli, [*args, "--seed", "7", "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert folder_bytes(out)["model.safetensors"] != first["model.safetensors"]
