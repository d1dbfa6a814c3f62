"""eval.protocol: each preset's settings, and a tie, a prefix and an aggregation decided the official way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from babyllama.cli import main
from babyllama.config import EvalConfig, load_config
from babyllama.evaluate.blimp import encode, load_pairs, score_sequences
from babyllama.evaluate.finetune import lr_factor
from babyllama.evaluate.formats import load_causal_lm
from babyllama.evaluate.registry import score_blimp
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("llama") / "m", "llama")


def _ev(protocol: str, **explicit) -> EvalConfig:
    return load_config(None, [f"eval.protocol={protocol}", *[f"eval.{k}={v}" for k, v in explicit.items()]]).eval


@pytest.mark.parametrize("protocol, zero_shot, finetune", [
    ("babyllama", ("eos", True, "wrong", "phenomena", "eos"),
     dict(lr=5e-5, batch_size=64, epochs=10, patience=10, eval_every=200, seed=12, max_seq_length=128,
          select_on="holdout", select_metric="task", pair_join="eos", schedule="linear")),
    ("babylm-2023", ("eos", True, "correct", "phenomena", "none"),
     dict(lr=5e-5, batch_size=64, epochs=10, patience=10, eval_every=200, seed=12, max_seq_length=128,
          select_on="validation", select_metric="f1_if_binary", pair_join="concat", schedule="linear")),
    ("babylm-2024", ("bos", True, "correct", "paradigms", "none"),
     dict(lr=5e-5, batch_size=64, epochs=10, patience=3, eval_every=0, seed=12, max_seq_length=128,
          select_on="validation", select_metric="f1_if_binary", pair_join="concat", schedule="linear")),
    ("babylm-2025", ("tokenizer", False, "correct", "paradigms", "tokenizer"),
     dict(lr=3e-5, batch_size=32, epochs=10, eval_every=0, seed=42, max_seq_length=512, select_on="validation",
          select_metric="task", pair_join="concat", weight_decay=0.01, warmup_fraction=0.06, schedule="cosine")),
    ("babylm-2026", ("tokenizer", False, "random", "paradigms", "tokenizer"),
     dict(lr=3e-5, batch_size=32, epochs=10, eval_every=0, seed=42, max_seq_length=512, select_on="validation",
          select_metric="task", pair_join="concat", weight_decay=0.01, warmup_fraction=0.06, schedule="cosine")),
])
def test_each_protocol_pins_its_settings(protocol, zero_shot, finetune) -> None:
    ev = _ev(protocol)
    assert (ev.prefix, ev.leading_space, ev.ties, ev.aggregation, ev.context_prefix) == zero_shot
    hp = ev.finetune_hparams("rte")
    assert {k: getattr(hp, k) for k in finetune} == finetune


def test_2025_per_task_settings_and_explicit_keys_override() -> None:
    ev = _ev("babylm-2025")
    assert ev.finetune_hparams("boolq").batch_size == 16 and ev.finetune_hparams("multirc").batch_size == 16
    assert ev.finetune_hparams("wsc").epochs == 30 and ev.finetune_hparams("wsc").lr == 3e-5
    ev = load_config(None, ["eval.protocol=babylm-2024", "eval.prefix=eos", "eval.finetune_defaults.patience=5",
                            "eval.ties_correct=false"]).eval
    assert (ev.prefix, ev.ties, ev.aggregation) == ("eos", "wrong", "paradigms")
    assert ev.finetune_defaults.patience == 5 and ev.finetune_defaults.select_on == "validation"
    ev = load_config(None, ["eval.protocol=babylm-2025", "eval.finetune_tasks.wsc.lr=1e-5"]).eval
    assert ev.finetune_hparams("wsc").lr == 1e-5 and ev.finetune_hparams("wsc").epochs == 30
    ev.blimp = "embedded:blimp"  # assigning a field keeps what the protocol set
    assert ev.prefix == "tokenizer" and ev.finetune_hparams("wsc").epochs == 30 and ev.finetune_hparams("boolq").batch_size == 16


def test_presets_use_their_years_protocol() -> None:
    for year in ("2023", "2024"):
        ev = load_config(ROOT / f"configs/babylm-{year}-strict-small.yaml").eval
        assert ev.protocol == f"babylm-{year}"
    assert load_config(ROOT / "configs/babylm-2024-strict-small.yaml").eval.prefix == "bos"
    assert load_config(ROOT / "configs/demo.yaml").eval.protocol == "babyllama"


def test_unknown_protocol_is_one_line(capsys) -> None:
    assert main(["config", "configs/demo.yaml", "--set", "eval.protocol=babylm-2030"]) == 2
    err = capsys.readouterr().err
    assert "eval.protocol" in err and "Traceback" not in err


def test_tie_counts_correct_under_every_babylm_protocol(llama_dir, tmp_path) -> None:
    tie = tmp_path / "tie.jsonl"  # identical sentences: a tie, whatever the model
    tie.write_text(json.dumps({"sentence_good": "The cat sees the dog.", "sentence_bad": "The cat sees the dog."}) + "\n")
    for protocol, expected in (("babyllama", 0.0), ("babylm-2023", 1.0), ("babylm-2024", 1.0), ("babylm-2025", 1.0)):
        r = score_blimp(llama_dir, str(tie), _ev(protocol))
        assert r["ties"] == 1 and r["accuracy"] == expected
    r = score_blimp(llama_dir, str(tie), _ev("babylm-2026"))  # drawn: either, and the expected half beside it
    assert r["ties"] == 1 and r["accuracy"] in (0.0, 1.0) and r["headline_by_ties"]["expected"] == 0.5


def test_prefix_and_leading_space_follow_the_protocol(llama_dir) -> None:
    model, tok = load_causal_lm(llama_dir, torch.device("cpu"))
    pairs, _ = load_pairs(FIX / "blimp_agg")
    ids = {"babylm-2023": tok.eos_token_id, "babylm-2024": tok.bos_token_id, "babylm-2025": None}
    for protocol, pid in ids.items():
        ev = _ev(protocol)
        r = score_blimp(llama_dir, str(FIX / "blimp_agg"), ev)
        assert r["protocol"]["prefix_token_id"] == pid
        # Recompute each decision by hand: sum of log p over the scored tokens, first argmax wins.
        correct = 0
        for p in pairs:
            scores = []
            for s in (p.good, p.bad):
                x = ([pid] if pid is not None else []) + encode(tok, [s], ev.leading_space)[0]
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([x])).logits[0, :-1].float(), -1)
                scores.append(sum(logp[i, x[i + 1]].item() for i in range(len(x) - 1)))
            correct += scores[0] > scores[1] or (scores[0] == scores[1] and ev.ties == "correct")
        assert correct == round(r["accuracy"] * r["n_pairs"])
    # 2025 scores the bare sentence: the first token is not scored and there is no leading space.
    bare = encode(tok, ["The cat sees the dog."], False)
    (score,) = score_sequences(model, bare, prefix_id=None)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor(bare)).logits[0, :-1], -1)
    assert score == pytest.approx(sum(logp[i, bare[0][i + 1]].item() for i in range(len(bare[0]) - 1)), abs=1e-4)


def test_headline_is_the_protocols_mean(llama_dir) -> None:
    # Two paradigms share the phenomenon "agreement" (2 and 3 pairs), a third is alone: the means differ.
    for protocol, key in (("babyllama", "macro_phenomena"), ("babylm-2023", "macro_phenomena"),
                          ("babylm-2024", "macro_paradigms"), ("babylm-2025", "macro_paradigms")):
        r = score_blimp(llama_dir, str(FIX / "blimp_agg"), _ev(protocol))
        par = r["paradigms"]
        assert r["macro_paradigms"] == pytest.approx(sum(v["accuracy"] for v in par.values()) / 3)
        pooled_agreement = (par["agreement_a"]["accuracy"] * 2 + par["agreement_b"]["accuracy"] * 3) / 5
        assert r["macro_phenomena"] == pytest.approx((pooled_agreement + par["islands"]["accuracy"]) / 2)
        assert r["headline"] == r[key] and r["aggregation"] == key.removeprefix("macro_")


def test_cli_protocol_flag_and_override(llama_dir, tmp_path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main(["evaluate", "blimp", "--model", str(llama_dir), "--data", str(FIX / "blimp_agg"),
                 "--protocol", "babylm-2024", "--prefix", "eos", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"]["prefix"] == "eos" and r["protocol"]["ties_correct"] is True and r["aggregation"] == "paradigms"
    assert main(["evaluate", "blimp", "--model", str(llama_dir), "--data", str(FIX / "blimp_agg"),
                 "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_2025_schedule_warms_up_then_decays_to_a_tenth() -> None:
    hp = _ev("babylm-2025").finetune_hparams("rte")
    assert lr_factor(0, 100, hp) == 0 and lr_factor(6, 100, hp) == pytest.approx(1.0)
    assert lr_factor(100, 100, hp) == pytest.approx(0.1)
    ours = _ev("babyllama").finetune_hparams("rte")
    assert lr_factor(0, 100, ours) == 1.0 and lr_factor(50, 100, ours) == 0.5 and lr_factor(100, 100, ours) == 0.0
