"""The BabyLM 2025 WUG tasks: the official format, the model's ratio from whole-sentence log-probabilities,
Spearman against people's ratios, the CLI verbs, the config keys, and babylm-2026 leaving them out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from babyllama.cli import main
from babyllama.config import load_config
from babyllama.evaluate.formats import load_causal_lm
from babyllama.evaluate.registry import check_data, jobs
from babyllama.evaluate.wug import evaluate_wug, load_wug, spearman
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread, train_tokenizer  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"
ADJ, PAST = FIX / "wug_adj_nominalization", FIX / "wug_past_tense"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


def test_spearman_ranks_ties_by_their_mean() -> None:
    for a, b in [([0.1, 0.5, 0.5, 0.9, 0.2], [3.0, 1.0, 2.0, 2.0, 0.5]), ([1, 2, 3, 4], [4, 3, 2, 1.0])]:
        assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    assert spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None


def test_model_ratio_is_the_first_sentences_share_and_rho_matches_by_hand(llama_dir) -> None:
    items = load_wug(ADJ)
    assert len(items) == 7 and items[0][1] == 0.71 and items[0][0][1].endswith("blickableness was plain to see.")
    r = evaluate_wug("wug_adj", llama_dir, ADJ)
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    by_hand = []
    for candidates, _ in items:
        sums = []
        for s in candidates:  # the tiny tokenizer adds no special tokens: every token after the first is scored
            x = tok(s)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([x])).logits[0, :-1].float(), -1)
            sums.append(sum(logp[i - 1, x[i]].item() for i in range(1, len(x))))
        by_hand.append(torch.softmax(torch.tensor(sums), 0)[0].item())
    assert r["model_ratios"] == pytest.approx(by_hand, abs=1e-5)
    assert r["headline"] == pytest.approx(spearmanr(by_hand, [h for _, h in items])[0], abs=1e-9)
    assert r["n_items"] == 7 and r["human_ratios"][0] == 0.71 and r["protocol"]["context_prefix"] == "tokenizer"


@pytest.mark.parametrize("row, says", [
    ({"ratio": 0.5}, "line 1: missing field 'sentences'"),
    ({"sentences": "Only one sentence.", "ratio": 0.5}, "line 1: field 'sentences' must hold at least 2"),
    ({"sentences": "A b.\tA c."}, "line 1: missing field 'ratio'"),
    ({"sentences": "A b.\tA c.", "ratio": "most"}, "line 1: field 'ratio' must be a finite number, got 'most'"),
    ({"sentences": "A b.\tA c.", "ratio": True}, "line 1: field 'ratio' must be a finite number"),
    ({"sentences": 7, "ratio": 0.5}, "line 1: field 'sentences' must be a string"),
])
def test_format_errors_name_file_line_and_field(llama_dir, tmp_path, capsys, row, says) -> None:
    (tmp_path / "wug_past_tense.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["evaluate", "wug-past", "--model", str(llama_dir), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wug_past_tense.jsonl" in err[0] and says in err[0]
    assert not list(tmp_path.glob("*.json"))


def test_cli_verbs_score_2025_and_refuse_2026(llama_dir, tmp_path, capsys) -> None:
    out = tmp_path / "past.json"
    assert main(["evaluate", "wug-past", "--model", str(llama_dir), "--data", str(PAST), "--protocol", "babylm-2025",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["task"] == "wug_past" and r["n_items"] == 6 and -1 <= r["headline"] <= 1
    assert f"| 6 | {100 * r['headline']:.2f} |" in capsys.readouterr().out
    assert main(["evaluate", "wug_adj", "--model", str(llama_dir), "--data", str(ADJ), "--protocol", "babylm-2026",
                 "--out", str(tmp_path / "adj.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "babylm-2026 protocol does not score it" in err[0] and not (tmp_path / "adj.json").exists()


def test_config_keys_jobs_and_the_2026_note(tmp_path, capsys) -> None:
    keys = [f"out_dir={tmp_path}", f"eval.wug_adj={ADJ}", f"eval.wug_past={PAST / 'wug_past_tense.jsonl'}"]
    cfg = load_config(None, [*keys, "eval.protocol=babylm-2025"])
    assert [j.file for e, j in jobs(cfg) if e.name.startswith("wug")] == ["wug_adj.json", "wug_past.json"]
    check_data(cfg)
    assert "note" not in capsys.readouterr().out
    cfg = load_config(None, [*keys, "eval.protocol=babylm-2026"])
    assert not [j for e, j in jobs(cfg) if e.name.startswith("wug")]
    check_data(cfg)
    out = capsys.readouterr().out
    assert "eval.wug_adj is set but not scored" in out and "eval.wug_past is set but not scored" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentences": "A b.\\tA c.", "ratio": 0.2}\n{"sentences": "A b.\\tA c."}\n')
    with pytest.raises(Exception, match=r"eval.wug_adj: .*bad.jsonl: line 2: missing field 'ratio'"):
        check_data(load_config(None, [f"out_dir={tmp_path}", f"eval.wug_adj={bad}", "eval.protocol=babylm-2025"]))
