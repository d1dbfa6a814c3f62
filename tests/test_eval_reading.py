"""The reading task: surprisal built as the official code builds it, and the gain in R² it reports."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from babyllama.cli import main
from babyllama.evaluate.formats import load_causal_lm
from babyllama.evaluate.reading import EYE, NUMERIC, SELF_PACED, TEXT, evaluate_reading, r_squared, surprisals
from fixtures.eval.tiny_models import TEXT as SENTENCES
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


def _words() -> list[tuple[str, str, str | None, str | None]]:
    """(item, word, prev_item, prev_word) for every word after the first of each sentence."""
    out = []
    for s in SENTENCES[:8]:
        words = s.split(" ")
        for i in range(1, len(words)):
            prev = (" ".join(words[: i - 1]), " " + words[i - 1]) if i > 1 else (None, None)
            out.append((" ".join(words[:i]), " " + words[i], *prev))
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*TEXT, *NUMERIC])
        w.writeheader()
        w.writerows(rows)
    return path


def test_surprisal_follows_the_official_token_by_token_rule(llama_dir) -> None:
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    context, word = "The cat sees the", " dogs happily."
    target = tok(word, add_special_tokens=False)["input_ids"]
    assert len(target) > 1
    p, text = 1.0, context  # one query at a time, text re-tokenized after each decoded token
    for k, t in enumerate(target):
        piece = tok.decode(t)
        ids = tok(text)["input_ids"]
        tid = t if k == 0 else tok(piece, add_special_tokens=False)["input_ids"][0]
        with torch.no_grad():
            p *= torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)[tid].item()
        text += piece
    (ours,) = surprisals(model, tok, [(context, word)], batch_size=1)
    batched = surprisals(model, tok, [(context, word), ("Who", " should"), ("The cat", " sees")], batch_size=3)
    assert ours == pytest.approx(-math.log(p), abs=1e-5) and batched[0] == pytest.approx(ours, abs=1e-5)


def test_r_squared_and_a_measure_that_is_the_surprisal(llama_dir, tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = 2 * x + rng.normal(size=50)
    assert r_squared(y, [x]) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    words = _words()
    pred = surprisals(model, tok, [(i, w) for i, w, _, _ in words])
    r = random.Random(0)
    rows = []
    for (item, word, prev_item, prev_word), s in zip(words, pred, strict=True):
        rows.append({"item": item, "word": word, "prev_item": prev_item or "", "prev_word": prev_word or "",
                     **{k: 3 * s + 7 for k in (*EYE, SELF_PACED)}, "Subtlex_log10": r.random(), "length": len(word),
                     "context_length": len(item.split()), "prev_length": len(prev_word) if prev_word else ""})
    rows[3]["RTgopast"] = ""  # a missing value drops that row from that measure only
    result = evaluate_reading(llama_dir, _write(tmp_path / "reading_data.csv", rows))
    assert result["n_words"] == len(words)
    # The measure is the surprisal itself: adding it explains everything that was left.
    assert result["eye_tracking"] == pytest.approx(100, abs=1e-6) and result["self_paced"] == pytest.approx(100, abs=1e-6)
    out = tmp_path / "r.json"
    assert main(["evaluate", "reading", "--model", str(llama_dir), "--data", str(tmp_path / "reading_data.csv"),
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["headline"] == pytest.approx(100, abs=1e-6)


@pytest.mark.parametrize("broken, says", [
    (lambda rows: [{k: v for k, v in r.items() if k != "RTgopast"} for r in rows], "line 1: missing column 'RTgopast'"),
    (lambda rows: [{**rows[0], "length": "five"}], "line 2: field 'length' must be a number, got 'five'"),
    (lambda rows: [{**rows[0], "word": ""}], "line 2: field 'word' is empty"),
])
def test_format_errors_are_one_line(llama_dir, tmp_path, capsys, broken, says) -> None:
    base = [{"item": "The cat", "word": " sees", "prev_item": "The", "prev_word": " cat", **{k: 1.0 for k in NUMERIC}}]
    rows = broken(base)
    path = tmp_path / "reading_data.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["evaluate", "reading", "--model", str(llama_dir), "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reading_data.csv" in err[0] and says in err[0]


def test_a_context_longer_than_learned_positions_is_one_line(tmp_path, capsys) -> None:
    gpt2 = make_model_dir(tmp_path / "gpt2", "gpt2", n_positions=8)
    long_item = " ".join(SENTENCES[0].split(" ") * 3)
    rows = [{"item": "The cat", "word": " sees", "prev_item": "The", "prev_word": " cat", **{k: 1.0 for k in NUMERIC}},
            {"item": long_item, "word": " sees", "prev_item": None, "prev_word": None, **{k: 1.0 for k in NUMERIC}}]
    path = _write(tmp_path / "reading_data.csv", rows)
    capsys.readouterr()
    assert main(["evaluate", "reading", "--model", str(gpt2), "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reading_data.csv: line 3: field 'item'" in err[0] and "8 positions" in err[0], err
