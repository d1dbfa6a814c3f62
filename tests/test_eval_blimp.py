"""BLiMP scoring: formats, the score definition, batching invariance, ties, schema, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from babyllama.cli import main
from babyllama.errors import UserError
from babyllama.evaluate.blimp import (
    encode,
    evaluate_blimp,
    evaluate_blimp_models,
    format_blimp_table,
    load_pairs,
    score_sequences,
)
from babyllama.evaluate.formats import load_causal_lm
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("gpt2") / "m", "gpt2", seed=1)


def test_formats_are_detected_and_grouped():
    pairs, formats = load_pairs(FIX / "blimp_original")
    assert formats == ["blimp"] and len(pairs) == 7
    assert {p.paradigm for p in pairs} == {"adjunct_island", "anaphor_gender_agreement", "determiner_noun_agreement_1"}
    assert {p.phenomenon for p in pairs} == {"island_effects", "anaphor_agreement", "determiner_noun_agreement"}
    assert {p.field for p in pairs} == {"syntax", "morphology"}

    pairs, formats = load_pairs(FIX / "blimp_2024")
    assert formats == ["babylm-2024-filtered"] and len(pairs) == 3

    pairs, formats = load_pairs(FIX / "supplement")
    assert formats == ["babylm-2024-supplement"] and len(pairs) == 3
    turn = [p for p in pairs if p.paradigm == "turn_taking"]
    assert turn[0].good == "A: Did you eat?\nB: Yes, I did." and turn[0].phenomenon == "turn_taking"
    assert all(p.field is None for p in pairs)

    pairs, formats = load_pairs(FIX / "blimp_2023")  # one JSON-lines file, one JSON-array file
    assert formats == ["babylm-2023-filtered"] and len(pairs) == 5
    assert [p.paradigm for p in pairs] == ["anaphor_agreement"] * 3 + ["island_effects"] * 2

    pairs, _ = load_pairs(FIX / "blimp_2023" / "island_effects.json")  # a single file
    assert len(pairs) == 2


def _manual_score(model, ids: list[int], prefix: int | None) -> list[float]:
    x = ([prefix] if prefix is not None else []) + ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([x])).logits[0, :-1].float(), -1)
    return [logp[i, x[i + 1]].item() for i in range(len(x) - 1)]


def test_score_is_sum_of_token_logprobs_after_the_prefix(llama_dir):
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    ids = encode(tok, ["The cat sees the dog."], leading_space=True)[0]
    assert ids == tok(" The cat sees the dog.", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    (s_eos,) = score_sequences(model, [ids], prefix_id=eos)
    assert s_eos == pytest.approx(sum(_manual_score(model, ids, eos)), abs=1e-5)
    (s_none,) = score_sequences(model, [ids], prefix_id=None)  # first token has no context: unscored
    lp_none = _manual_score(model, ids, None)
    assert len(lp_none) == len(ids) - 1 and s_none == pytest.approx(sum(lp_none), abs=1e-5)
    (s_mean,) = score_sequences(model, [ids], prefix_id=eos, reduction="mean")
    assert s_mean == pytest.approx(s_eos / len(ids), abs=1e-6)
    (s_bos,) = score_sequences(model, [ids], prefix_id=tok.bos_token_id)
    assert s_bos != s_eos


def test_several_models_at_once_equal_one_at_a_time(llama_dir, gpt2_dir):
    """One read and one tokenization shared by the models changes no result (nor the order of the results)."""
    together = list(evaluate_blimp_models([llama_dir, gpt2_dir, llama_dir], FIX / "supplement", device="cpu"))
    alone = [evaluate_blimp(d, FIX / "supplement", device="cpu") for d in (llama_dir, gpt2_dir, llama_dir)]
    assert together == alone and together[0]["model"] == str(llama_dir) and together[1]["model"] == str(gpt2_dir)


def test_encode_gives_the_tokenizers_own_ids(llama_dir):
    _, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    sentences = [s for folder in ("blimp_original", "supplement") for p in load_pairs(FIX / folder)[0]
                 for s in (p.good, p.bad)]
    for space in (True, False):
        texts = [(" " + s) if space else s for s in sentences]
        assert encode(tok, sentences, space) == tok(texts, add_special_tokens=False)["input_ids"]


def test_long_inputs_are_truncated_from_the_left(tmp_path):
    model, tok = load_causal_lm(make_model_dir(tmp_path / "short", "llama", n_positions=8), torch.device("cpu"))
    ids = encode(tok, ["What did the child find near the old garden while singing a song?"], True)[0]
    assert len(ids) > 8
    (s,) = score_sequences(model, [ids], prefix_id=tok.eos_token_id)
    assert s == pytest.approx(sum(_manual_score(model, ids[-8:], None)), abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_scores_equal_one_at_a_time(arch, llama_dir, gpt2_dir):
    model_dir = llama_dir if arch == "llama" else gpt2_dir
    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    sentences = [s for folder in ("blimp_original", "supplement", "blimp_2023")
                 for p in load_pairs(FIX / folder)[0] for s in (p.good, p.bad)]
    seqs = encode(tok, sentences, leading_space=True)
    assert len({len(s) for s in seqs}) > 5  # real padding happens
    for prefix in (tok.eos_token_id, None):
        batched = score_sequences(model, seqs, prefix_id=prefix, batch_size=64)
        single = [score_sequences(model, [s], prefix_id=prefix, batch_size=1)[0] for s in seqs]
        assert batched == pytest.approx(single, abs=1e-4, rel=1e-6)
    a = evaluate_blimp(model_dir, FIX / "blimp_original", batch_size=1, device="cpu")
    b = evaluate_blimp(model_dir, FIX / "blimp_original", batch_size=64, device="cpu")
    assert a == b


def test_result_schema_ties_and_table(llama_dir):
    r = evaluate_blimp(llama_dir, FIX / "blimp_original", device="cpu")
    assert r["protocol"] == {"prefix": "eos", "prefix_token_id": 1, "leading_space": True, "reduction": "sum",
                             "ties": "wrong", "seed": 0, "ties_correct": False, "truncate": True}
    assert set(r["paradigms"]) == {"adjunct_island", "anaphor_gender_agreement", "determiner_noun_agreement_1"}
    assert set(r["fields"]) == {"syntax", "morphology"} and r["n_pairs"] == 7
    for kind in ("paradigms", "phenomena", "fields"):
        for stats in r[kind].values():
            assert set(stats) == {"accuracy", "n", "ties"} and 0 <= stats["accuracy"] <= 1
    # The identical pair in determiner_noun_agreement_1 is a tie: wrong by default, right on request.
    assert r["paradigms"]["determiner_noun_agreement_1"]["ties"] == 1 and r["ties"] == 1
    r2 = evaluate_blimp(llama_dir, FIX / "blimp_original", ties="correct", device="cpu")
    d1, d2 = r["paradigms"]["determiner_noun_agreement_1"], r2["paradigms"]["determiner_noun_agreement_1"]
    assert d2["accuracy"] == pytest.approx(d1["accuracy"] + 0.5)
    r3 = evaluate_blimp(llama_dir, FIX / "blimp_original", ties="expected", device="cpu")
    assert r3["paradigms"]["determiner_noun_agreement_1"]["accuracy"] == pytest.approx(d1["accuracy"] + 0.25)
    assert r["headline_by_ties"] == r2["headline_by_ties"] == r3["headline_by_ties"]
    assert r3["headline"] == r["headline_by_ties"]["expected"] and r2["headline"] == r["headline_by_ties"]["correct"]
    accs = [s["accuracy"] for s in r["paradigms"].values()]
    assert r["macro_paradigms"] == pytest.approx(sum(accs) / 3)
    morph = r["fields"]["morphology"]
    assert morph["n"] == 5
    assert morph["accuracy"] * 5 == pytest.approx(
        r["paradigms"]["anaphor_gender_agreement"]["accuracy"] * 3 + d1["accuracy"] * 2)
    table = format_blimp_table(r)
    assert "| island_effects |" in table and "| morphology |" in table and "paradigms" in table
    json.dumps(r)  # JSON-serialisable as is


def test_protocol_options_change_scores(llama_dir, gpt2_dir):
    base = evaluate_blimp(llama_dir, FIX / "supplement", device="cpu")
    assert base["fields"] == {} and set(base["phenomena"]) == {"hypernym", "turn_taking"}
    other = evaluate_blimp(gpt2_dir, FIX / "supplement", prefix="none", leading_space=False, reduction="mean",
                           device="cpu")
    assert other["protocol"]["prefix_token_id"] is None and other["protocol"]["reduction"] == "mean"
    assert not math.isnan(other["macro_paradigms"])


def test_bad_data_names_file_and_line(llama_dir, tmp_path):
    with pytest.raises(UserError, match=r"missing_field\.jsonl: line 2: missing field 'sentence_bad'"):
        load_pairs(FIX / "bad" / "missing_field.jsonl")
    with pytest.raises(UserError, match=r"malformed\.jsonl: line 3: not valid JSON"):
        load_pairs(FIX / "bad" / "malformed.jsonl")
    with pytest.raises(UserError, match="no .jsonl or .json files"):
        load_pairs(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_pairs(tmp_path / "nope")


def test_bad_model_dirs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        evaluate_blimp(tmp_path / "empty", FIX / "blimp_2024", device="cpu")
    mlm = tmp_path / "mlm"
    mlm.mkdir()
    (mlm / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UserError, match="BertForMaskedLM is not a causal language model"):
        evaluate_blimp(mlm, FIX / "blimp_2024", device="cpu")
    nobos = make_model_dir(tmp_path / "nobos", "gpt2", bos=False)
    with pytest.raises(UserError, match="no bos token"):
        evaluate_blimp(nobos, FIX / "blimp_2024", prefix="bos", device="cpu")


def test_cli_writes_json_and_reports_errors_without_traceback(llama_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", "blimp", "--model", str(llama_dir), "--data", str(FIX / "blimp_2024"),
                 "--out", str(out), "--device", "cpu", "--ties-correct"]) == 0
    saved = json.loads(out.read_text())
    assert saved["protocol"]["ties_correct"] is True and saved["n_pairs"] == 3
    assert "| anaphor_agreement |" in capsys.readouterr().out
    assert main(["evaluate", "blimp", "--model", str(tmp_path), "--data", str(FIX / "blimp_2024")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("babyllama: error:") and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_embedded_subset_is_100_pairs_of_each_paradigm_with_attribution():
    from babyllama.evaluate.blimp import EMBEDDED

    pairs, formats = load_pairs("embedded:blimp")
    assert formats == ["blimp"] and len(pairs) == 6700
    counts = {}
    for p in pairs:
        counts[p.paradigm] = counts.get(p.paradigm, 0) + 1
    assert len(counts) == 67 and set(counts.values()) == {100}
    readme = (EMBEDDED["embedded:blimp"].parent / "README.md").read_text()
    assert "CC BY 4.0" in readme and "Warstadt" in readme
    with pytest.raises(UserError, match="no such embedded data set"):
        load_pairs("embedded:nope")


def test_model_id_found_in_the_local_hugging_face_cache(llama_dir, tmp_path, monkeypatch, capsys):
    """--model takes a Hub id the local cache holds (no network); an uncached id names the download command."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-llama" / "snapshots" / ("a" * 40)
    shutil.copytree(llama_dir, snapshot)
    (cache / "models--someone--tiny-llama" / "refs").mkdir()
    (cache / "models--someone--tiny-llama" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    out = tmp_path / "r.json"
    assert main(["evaluate", "blimp", "--model", "someone/tiny-llama", "--data", str(FIX / "blimp_2024"),
                 "--out", str(out), "--device", "cpu"]) == 0
    direct = evaluate_blimp(llama_dir, FIX / "blimp_2024", device="cpu")
    assert json.loads(out.read_text())["headline"] == direct["headline"]
    capsys.readouterr()
    assert main(["evaluate", "blimp", "--model", "someone/not-cached", "--data", str(FIX / "blimp_2024")]) == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download someone/not-cached" in err and len(err.strip().splitlines()) == 1
