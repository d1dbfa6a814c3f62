"""BabyLM 2026 zero-shot rules: tie rules, NaN, EWoK's context pairing, the entity-tracking filter, GlobalPIQA,
the tokenizer's own special tokens, and what happens to inputs longer than the model's positions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from babyllama.cli import main
from babyllama.config import load_config
from babyllama.evaluate.blimp import official_inputs, score_sequences
from babyllama.evaluate.completions import aggregate, evaluate_completions, load_items
from babyllama.evaluate.decide import decide
from babyllama.evaluate.formats import load_causal_lm
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread, train_tokenizer  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


def test_tie_rules_and_nan() -> None:
    scores = [[1.0, 1.0], [2.0, 1.0], [0.5, 0.5, 0.5], [math.nan, -3.0], [-1.0, math.nan], [3.0, 3.0, 1.0]]
    labels = [0, 0, 1, 0, 0, 2]
    d = decide(scores, labels, seed=7)
    assert d.tie == [True, False, True, False, False, False]  # the last tie leaves the correct one out
    assert d.credit["correct"] == [1, 1, 1, 0, 1, 0]  # NaN is minus infinity: it loses, and its rival wins
    assert d.credit["wrong"] == [0, 1, 0, 0, 1, 0]
    assert d.credit["expected"] == [0.5, 1, 1 / 3, 0, 1, 0]
    assert set(d.credit["random"][i] for i in (0, 2)) <= {0.0, 1.0} and d.credit["random"][1::2] == [1, 0, 0]
    assert decide(scores, labels, seed=7).credit["random"] == d.credit["random"]  # seeded: the same draws
    # Many two-way ties: the seeded draw lands near the expected half, and other seeds draw differently.
    many = decide([[0.0, 0.0]] * 400, [0] * 400, seed=1).credit["random"]
    assert 0.4 < sum(many) / 400 < 0.6 and many != decide([[0.0, 0.0]] * 400, [0] * 400, seed=2).credit["random"]


def test_old_ties_correct_maps_onto_ties() -> None:
    assert load_config(None, ["eval.protocol=babylm-2026"]).eval.ties == "random"
    assert load_config(None, ["eval.protocol=babylm-2026", "eval.ties_correct=true"]).eval.ties == "correct"
    assert load_config(None, ["eval.ties_correct=false", "eval.protocol=babylm-2025"]).eval.ties == "wrong"
    ev = load_config(None, ["eval.protocol=babylm-2026"]).eval
    assert (ev.prefix, ev.context_prefix, ev.truncate, ev.ewok_pairing, ev.entity_skip_nothing) == (
        "tokenizer", "tokenizer", False, "contexts", True)
    with pytest.raises(Exception, match="contradicts"):
        load_config(None, ["eval.ties_correct=true", "eval.ties=wrong"])


def test_ewok_2026_pairs_two_contexts_with_one_target() -> None:
    items, _ = load_items("ewok", FIX / "ewok" / "physical-relations.jsonl", ewok_pairing="contexts")
    assert items[0].options == [("The ball is in the little house. The ball is inside.", " The ball is inside."),
                                ("The ball is in the old garden. The ball is inside.", " The ball is inside.")]
    old, _ = load_items("ewok", FIX / "ewok" / "physical-relations.jsonl")
    assert old[0].options[1] == ("The ball is in the little house. The ball is outside.", " The ball is outside.")


def test_entity_tracking_filter_skips_options_with_nothing(tmp_path) -> None:
    items, skipped = load_items("entity_tracking", FIX / "entity_tracking", skip_nothing=True)
    assert skipped == 4 and [i.group for i in items] == ["ambiref_0_ops"]
    assert len(load_items("entity_tracking", FIX / "entity_tracking")[0]) == 5
    row = {"input_prefix": "Box 0 contains", "options": [" Nothing.", " the cat."], "numops": 0}
    (tmp_path / "regular.jsonl").write_text(json.dumps(row) + "\n")
    assert load_items("entity_tracking", tmp_path, skip_nothing=True)[1] == 0  # the match is case-sensitive, as upstream


def test_global_piqa_official_format_and_length_normalisation(llama_dir) -> None:
    items, _ = load_items("global_piqa", FIX / "global_piqa")
    assert [len(i.options) for i in items] == [4, 4, 4, 2, 2] and [i.label for i in items] == [0, 1, 3, 0, 1]
    assert items[0].options[0] == ("To keep the apple fresh, put it in the cold box.", " put it in the cold box.")
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    r = evaluate_completions("global_piqa", llama_dir, FIX / "global_piqa", context_prefix="tokenizer", ties="random")
    # Each candidate by hand: the mean log-probability of the solution's tokens after the prompt.
    expected_sets = {}
    for name, n in (("parallel", 4), ("nonparallel", 2)):
        rows = [json.loads(x) for x in (FIX / "global_piqa" / f"global_piqa_{name}" / "eng_latn.jsonl").read_text().splitlines()]
        hits = []
        for row in rows:
            means = []
            for k in range(n):
                ctx = tok(row["prompt"], add_special_tokens=False)["input_ids"]
                x = ctx + tok(" " + row[f"solution{k}"], add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([x])).logits[0, :-1], -1)
                means.append(sum(logp[i - 1, x[i]].item() for i in range(len(ctx), len(x))) / (len(x) - len(ctx)))
            hits.append(max(range(n), key=lambda k: means[k]) == row["label"])
        expected_sets[name] = sum(hits) / len(hits)
    assert r["sets"] == pytest.approx(expected_sets) and r["n_items"] == 5
    assert r["headline"] == pytest.approx(sum(expected_sets.values()) / 2)
    one, _ = load_items("global_piqa", FIX / "global_piqa" / "global_piqa_nonparallel" / "eng_latn.jsonl")
    assert len(one) == 2 and one[0].group.startswith("nonparallel/")


def test_results_report_every_tie_rule() -> None:
    items, _ = load_items("comps", FIX / "comps")
    scores = [[0.0, 0.0]] * len(items)  # all tied
    r = aggregate("comps", items, scores, ties="random", seed=3)
    assert r["ties"] == len(items)
    assert r["headline_by_ties"]["correct"] == 1.0 and r["headline_by_ties"]["wrong"] == 0.0
    assert r["headline_by_ties"]["expected"] == 0.5 and r["headline"] == r["headline_by_ties"]["random"]


def test_tokenizer_special_tokens_are_context_not_scored(tmp_path) -> None:
    """A tokenizer that adds <s> (and one that also appends </s>): <s> is context, </s> is not scored."""
    from tokenizers import processors

    tok = train_tokenizer()
    bos, eos = tok.bos_token_id, tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    text = "The cat sees the dog."
    ids, spans = official_inputs(tok, [text], [text])
    bare = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == [bos, *bare, eos] and spans[0] == (1, len(bare) + 1)
    ids, spans = official_inputs(tok, [text], [" the dog."])
    assert spans[0][1] == len(bare) + 1 and spans[0][1] - spans[0][0] == len(tok(" the dog.", add_special_tokens=False)["input_ids"])


def test_long_inputs_no_truncation_and_a_note(tmp_path, capsys) -> None:
    """Under 2025/2026 a rotary model scores a long input whole; a learned-position model keeps its tail, with a note."""
    llama = make_model_dir(tmp_path / "llama", "llama", n_positions=8)
    gpt2 = make_model_dir(tmp_path / "gpt2", "gpt2", n_positions=8)
    data = tmp_path / "comps_base.jsonl"
    row = {"prefix_acceptable": "The boys like the red apple and the little house, and", "prefix_unacceptable":
           "The cats see the dogs near the old garden, and", "property_phrase": "she thinks that he is happy."}
    data.write_text(json.dumps(row) + "\n")
    model, tok = load_causal_lm(llama, torch.device("cpu"))
    ids = tok(row["prefix_acceptable"] + " " + row["property_phrase"], add_special_tokens=False)["input_ids"]
    assert len(ids) > 8
    whole = score_sequences(model, [ids], prefix_id=None, truncate=False)[0]
    cut = score_sequences(model, [ids], prefix_id=None, truncate=True)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
    assert whole == pytest.approx(sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids))), abs=1e-4) and whole != cut
    for folder, says in ((llama, "scored whole"), (gpt2, "cannot read past them")):
        out = tmp_path / f"{folder.name}.json"
        assert main(["evaluate", "comps", "--model", str(folder), "--data", str(data), "--protocol", "babylm-2026",
                     "--out", str(out)]) == 0
        notes = json.loads(out.read_text())["notes"]
        assert len(notes) == 1 and says in notes[0] and "2 of 2 inputs" in notes[0]


@pytest.mark.parametrize("name, row, says", [
    ("missing label", {"example_id": "a", "prompt": "p", "solution0": "x", "solution1": "y"}, "line 1: field 'label'"),
    ("label out of range", {"example_id": "a", "prompt": "p", "solution0": "x", "solution1": "y", "label": 2},
     "line 1: field 'label' must be an integer from 0 to 1"),
    ("missing solution", {"example_id": "a", "prompt": "p", "solution0": "x", "label": 0},
     "line 1: missing field 'solution1'"),
    ("missing example_id", {"prompt": "p", "solution0": "x", "solution1": "y", "label": 0},
     "line 1: missing field 'example_id'"),
    ("prompt not text", {"example_id": "a", "prompt": 3, "solution0": "x", "solution1": "y", "label": 0},
     "line 1: field 'prompt' must be a string"),
])
def test_global_piqa_format_errors_name_file_line_and_field(llama_dir, tmp_path, capsys, name, row, says) -> None:
    folder = tmp_path / "global_piqa_nonparallel"
    folder.mkdir()
    (folder / "eng_latn.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["evaluate", "global-piqa", "--model", str(llama_dir), "--data", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eng_latn.jsonl" in err[0] and says in err[0]


def test_ewok_2026_missing_context2_is_one_line(llama_dir, tmp_path, capsys) -> None:
    row = {"Domain": "d", "Context1": "a.", "Target1": "b.", "Target2": "c."}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["evaluate", "ewok", "--model", str(llama_dir), "--data", str(tmp_path), "--protocol", "babylm-2026"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "d.jsonl: line 1: missing field 'Context2'" in err[0]


def test_cli_global_piqa_and_2026_blimp(llama_dir, tmp_path, capsys) -> None:
    out = tmp_path / "gp.json"
    assert main(["evaluate", "global-piqa", "--model", str(llama_dir), "--data", str(FIX / "global_piqa"),
                 "--protocol", "babylm-2026", "--seed", "5", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"]["ties"] == "random" and r["protocol"]["seed"] == 5 and set(r["sets"]) == {"parallel", "nonparallel"}
    assert set(r["headline_by_ties"]) == {"correct", "wrong", "random", "expected"}
    out = tmp_path / "blimp.json"
    assert main(["evaluate", "blimp", "--model", str(llama_dir), "--data", str(FIX / "blimp_original"),
                 "--protocol", "babylm-2026", "--ties", "expected", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"]["prefix"] == "tokenizer" and r["headline"] == r["headline_by_ties"]["expected"]


def test_report_notes_name_ties_long_inputs_and_skipped_items(llama_dir, tmp_path) -> None:
    from babyllama.evaluate.registry import result_notes

    cfg = load_config(None, [f"out_dir={tmp_path}", "eval.protocol=babylm-2026", "eval.perplexity=false",
                             f"eval.entity_tracking={FIX / 'entity_tracking'}", f"eval.comps={FIX / 'comps'}"])
    entity = evaluate_completions("entity_tracking", llama_dir, FIX / "entity_tracking", context_prefix="tokenizer",
                                  ties="random", entity_skip_nothing=True, truncate=False)
    comps = evaluate_completions("comps", llama_dir, FIX / "comps", ties="random")
    comps["ties"], comps["headline_by_ties"] = 2, {"random": 0.5, "expected": 0.25}  # as if two items had tied
    comps["notes"] = ["3 of 4 inputs are longer than the model's 64 positions; scored whole"]
    notes = result_notes(cfg, "m", {"entity_tracking": entity, "comps": comps})
    assert "entity tracking: 4 items left out (an option contains \"nothing\")" in notes
    assert any(n.startswith("COMPS: 2 ties;") and "50.0 by a draw seeded 0, 25.0 by expected credit" in n for n in notes)
    assert "COMPS: 3 of 4 inputs are longer than the model's 64 positions; scored whole" in notes


def test_2023_files_are_grouped_by_file_whatever_the_rows_say(tmp_path) -> None:
    from babyllama.evaluate.blimp import load_pairs

    rows = [{"sentence_good": "The cat sees the dog.", "sentence_bad": "The cat see the dog.", "UID": "sv_agreement",
             "linguistics_term": "subject_verb_agreement"}]
    (tmp_path / "agreement.json").write_text(json.dumps(rows))  # a 2023 file: one JSON array per phenomenon
    (tmp_path / "islands.json").write_text(json.dumps([{**rows[0], "linguistics_term": "island_effects"}]))
    pairs, formats = load_pairs(tmp_path)
    assert formats == ["babylm-2023-filtered"] and [p.phenomenon for p in pairs] == ["agreement", "islands"]
    (tmp_path / "agreement.json").rename(tmp_path / "agreement.jsonl")  # other formats keep the row's term
    (tmp_path / "agreement.jsonl").write_text(json.dumps({**rows[0], "pairID": "1"}) + "\n")
    (tmp_path / "islands.json").unlink()
    assert [p.phenomenon for p in load_pairs(tmp_path)[0]] == ["subject_verb_agreement"]


def test_nan_scores_through_the_entry_point(llama_dir, tmp_path) -> None:
    """A model whose scores are all NaN: every candidate counts as minus infinity, so every item ties."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "nan")
    AutoTokenizer.from_pretrained(llama_dir).save_pretrained(tmp_path / "nan")
    r = evaluate_completions("comps", tmp_path / "nan", FIX / "comps", ties="expected")
    assert r["ties"] == r["n_items"] and r["headline"] == 0.5
    assert r["headline_by_ties"]["correct"] == 1.0 and r["headline_by_ties"]["wrong"] == 0.0
