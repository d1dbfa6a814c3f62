"""EWoK, entity tracking and COMPS on fixtures in the official formats: completion tokens, scores, aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from babyllama.cli import main
from babyllama.errors import UserError
from babyllama.evaluate.completions import completion_lengths, evaluate_completions, load_items
from babyllama.evaluate.formats import load_causal_lm
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


def _logp_of_completion(model, tok, context: str, completion: str) -> float:
    """log p(completion | context) with context and completion tokenized apart (they split at a space here)."""
    c = tok(context, add_special_tokens=False)["input_ids"]
    x = c + tok(completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([x])).logits[0, :-1], -1)
    return sum(logp[i - 1, x[i]].item() for i in range(len(c), len(x)))


def test_items_follow_the_official_formats() -> None:
    ewok, _ = load_items("ewok", FIX / "ewok")
    assert len(ewok) == 6 and {i.group for i in ewok} == {"physical-relations", "social-relations"}
    first = ewok[0]
    assert first.options[0] == ("The ball is in the little house. The ball is inside.", " The ball is inside.")
    assert ewok[1].options[0][0].startswith("The ball is in the old garden.")  # the swapped copy
    et, _ = load_items("entity_tracking", FIX / "entity_tracking")
    assert {i.group for i in et} == {"ambiref_0_ops", "move_contents_1_ops", "regular_0_ops", "regular_1_ops"}
    assert len(et[-1].options) == 3
    comps, _ = load_items("comps", FIX / "comps")
    assert {i.group for i in comps} == {"base", "wugs"}
    assert comps[0].options[1] == ("A house can see the dog.", "can see the dog.")


def test_completion_tokens_and_scores(llama_dir) -> None:
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    text, completion = "The cat sees the dog. The cat likes the dog.", " The cat likes the dog."
    ids, counts = completion_lengths(tok, [(text, completion)])
    assert counts[0] == len(tok(completion, add_special_tokens=False)["input_ids"]) and counts[0] < len(ids[0])
    r = evaluate_completions("ewok", llama_dir, FIX / "ewok" / "physical-relations.jsonl", ties="correct")
    item_scores = []
    for ctx, t1, t2 in (("The ball is in the little house.", " The ball is inside.", " The ball is outside."),
                        ("The ball is in the old garden.", " The ball is outside.", " The ball is inside.")):
        item_scores.append((_logp_of_completion(model, tok, ctx, t1), _logp_of_completion(model, tok, ctx, t2)))
    expected = sum(a >= b for a, b in item_scores) / 2
    assert r["groups"]["physical-relations"]["accuracy"] == expected and r["n_items"] == 2


def test_official_aggregation(llama_dir) -> None:
    r = evaluate_completions("entity_tracking", llama_dir, FIX / "entity_tracking")
    g = {k: v["accuracy"] for k, v in r["groups"].items()}
    regular = (g["regular_0_ops"] + g["regular_1_ops"]) / 2  # mean over the split's groups, not its items
    assert r["splits"] == pytest.approx({"regular": regular, "ambiref": g["ambiref_0_ops"],
                                         "move_contents": g["move_contents_1_ops"]})
    assert r["headline"] == pytest.approx((regular + g["ambiref_0_ops"] + g["move_contents_1_ops"]) / 3)
    for task in ("ewok", "comps"):
        r = evaluate_completions(task, llama_dir, FIX / task)
        accs = [v["accuracy"] for v in r["groups"].values()]
        assert r["headline"] == pytest.approx(sum(accs) / len(accs)) and r["protocol"]["prefix_token_id"] is None


def test_cli_each_task_and_format_errors(llama_dir, tmp_path, capsys) -> None:
    for verb, folder in (("ewok", "ewok"), ("entity-tracking", "entity_tracking"), ("comps", "comps")):
        out = tmp_path / f"{folder}.json"
        assert main(["evaluate", verb, "--model", str(llama_dir), "--data", str(FIX / folder), "--out", str(out),
                     "--protocol", "babylm-2025"]) == 0
        r = json.loads(out.read_text())
        assert r["task"] == folder and 0 <= r["headline"] <= 1 and r["protocol"]["ties_correct"] is True
    capsys.readouterr()
    bad = tmp_path / "blimp_like.jsonl"
    bad.write_text(json.dumps({"sentence_good": "a", "sentence_bad": "b"}) + "\n")
    assert main(["evaluate", "ewok", "--model", str(llama_dir), "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "blimp_like.jsonl: line 1: missing field 'Context1', not the ewok format" in err and "Traceback" not in err
    wrong_name = tmp_path / "et" / "other.jsonl"
    wrong_name.parent.mkdir()
    wrong_name.write_text(json.dumps({"input_prefix": "x", "options": [" a", " b"], "numops": 0}) + "\n")
    with pytest.raises(UserError, match="start with a split"):
        load_items("entity_tracking", wrong_name.parent)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"input_prefix": "x", "options": [" a"], "numops": 0}) + "\n")
    with pytest.raises(UserError, match="at least 2 strings"):
        load_items("entity_tracking", one)
