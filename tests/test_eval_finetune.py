"""(Super)GLUE / MSGS fine-tuning: file formats, inputs, metrics, pooling, the loop, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from babyllama.cli import main
from babyllama.config import FinetuneConfig
from babyllama.errors import UserError
from babyllama.evaluate.finetune import (
    MSGS_TASKS,
    classify_logits,
    encode_examples,
    f1_score,
    find_task_files,
    finetune_task,
    load_classifier,
    matthews_corrcoef,
    read_examples,
)
from babyllama.evaluate.formats import load_tokenizer
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"
QUICK = FinetuneConfig(lr=1e-3, batch_size=4, epochs=2, eval_every=2, patience=10, seed=3)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("ft-llama") / "m", "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("ft-gpt2") / "m", "gpt2", seed=2)


def test_metrics():
    y, p = [1, 1, 0, 0], [1, 0, 0, 0]
    assert matthews_corrcoef(y, p) == pytest.approx(2 / 12**0.5)
    assert matthews_corrcoef(y, y) == pytest.approx(1.0) and matthews_corrcoef(y, [0, 0, 1, 1]) == pytest.approx(-1.0)
    assert matthews_corrcoef(y, [1, 1, 1, 1]) == 0.0  # constant predictions
    assert f1_score(y, p) == pytest.approx(2 / 3) and f1_score(y, [0, 0, 0, 0]) == 0.0


def test_task_files_in_both_babylm_layouts(tmp_path):
    g23, g24 = FIX / "glue_2023", FIX / "glue_2024"
    assert find_task_files(g23, "cola") == (g23 / "cola.train.json", g23 / "cola.validation.json")
    assert find_task_files(g23, "mnli") == (g23 / "mnli.train.json", g23 / "mnli.validation_matched.json")
    assert find_task_files(g23, "mnli-mm") == (g23 / "mnli.train.json", g23 / "mnli.validation_mismatched.json")
    assert find_task_files(g24, "mnli-mm") == (g24 / "mnli.train.jsonl", g24 / "mnli-mm.valid.jsonl")
    assert find_task_files(g24, "sst2") == (g24 / "sst2.train.jsonl", g24 / "sst2.valid.jsonl")
    assert find_task_files(g23, "rte") == (None, None)
    root = tmp_path / "filter-data"  # the pipeline's layout: glue_filtered/ and msgs_filtered/ sub-folders
    shutil.copytree(g23, root / "glue_filtered")
    shutil.copytree(FIX / "msgs", root / "msgs_filtered")
    assert find_task_files(root, "wsc")[1] == root / "glue_filtered" / "wsc.validation.json"
    assert find_task_files(root, "main_verb_control")[0] == root / "msgs_filtered" / "main_verb_control.train.json"


def test_inputs_follow_glue_conventions():
    g23, g24 = FIX / "glue_2023", FIX / "glue_2024"
    ex = read_examples(g23 / "multirc.train.json", "multirc")
    assert ex.texts[0] == ["Question: Where does the cat live? Answer: In the little house.",
                           ex.texts[0][1]] and ex.texts[0][1].startswith("The cat lives")
    ex = read_examples(g23 / "wsc.validation.json", "wsc")
    assert ex.texts[0][0] == 'Does "she" refer to "Susan" in this passage?' and ex.labels == [1, 0]
    assert read_examples(g24 / "boolq.train.jsonl", "boolq").labels == [1, 0, 1]  # JSON booleans
    assert read_examples(g24 / "qqp.train.jsonl", "qqp").texts[0] == ["How do cats sleep?", "How do cats rest?"]
    assert read_examples(g24 / "qnli.train.jsonl", "qnli").texts[0][0] == "Where does the cat live?"
    assert read_examples(g24 / "rte.valid.jsonl", "rte").texts == [["A child helps her friend.", "Someone is helped."]]
    assert read_examples(g24 / "mrpc.valid.jsonl", "mrpc").labels == [1]
    assert set(read_examples(g23 / "mnli.train.json", "mnli").labels) == {0, 1, 2}
    msgs = FIX / "msgs" / "main_verb_control.validation.json"
    assert len(read_examples(msgs, "main_verb_control").labels) == 8
    assert len(read_examples(msgs, "main_verb_control", evaluation=True).labels) == 5  # condition == "test" only
    assert len(MSGS_TASKS) == 11


def test_encoding_joins_segments_and_fits_the_length(llama_dir):
    _, tok, pad_id, sep_id = load_classifier(llama_dir, 2, torch.device("cpu"))
    assert (pad_id, sep_id) == (tok.pad_token_id, tok.eos_token_id)
    texts = [["The cat sees the dog.", "Many girls insulted themselves."], ["A man was helping himself."]]
    ids = encode_examples(tok, texts, sep_id, max_len=64)
    a = tok(texts[0][0], add_special_tokens=False)["input_ids"]
    b = tok(texts[0][1], add_special_tokens=False)["input_ids"]
    assert ids[0] == a + [sep_id] + b and ids[1] == tok(texts[1][0], add_special_tokens=False)["input_ids"]
    short = encode_examples(tok, texts, sep_id, max_len=8)
    k = short[0].index(sep_id)  # longest segment trimmed first: both keep the same share
    m = len(short[0]) - k - 1
    assert len(short[0]) == 8 and short[0] == a[:k] + [sep_id] + b[:m] and abs(k - m) <= 1
    assert len(short[1]) <= 8


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_classifier_pools_the_last_real_token(arch, llama_dir, gpt2_dir):
    model, tok, pad_id, sep_id = load_classifier(llama_dir if arch == "llama" else gpt2_dir, 3, torch.device("cpu"))
    model.eval()
    seqs = encode_examples(tok, [["The cat sees the dog."], ["Who should Derek hug after shocking Richard?"],
                                 ["She thinks", "that he is happy."]], sep_id, 64)
    with torch.no_grad():
        batched = classify_logits(model, seqs, pad_id)
        single = torch.cat([classify_logits(model, [s], pad_id) for s in seqs])
        hidden = model.base_model(input_ids=torch.tensor([seqs[0]])).last_hidden_state[0, -1]
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    head = model.score
    torch.testing.assert_close(single[0], head(hidden), atol=1e-5, rtol=1e-5)


def test_finetune_end_to_end_is_seeded_and_writes_results(llama_dir, tmp_path):
    r = finetune_task(llama_dir, FIX / "glue_2023", "cola", QUICK, out=tmp_path / "cola", device="cpu")
    assert r["task"] == "cola" and r["metric"] == "mcc" and -1 <= r["score"] <= 1
    assert r["n_train"] + r["n_holdout"] == 22 and r["n_holdout"] == 2 and r["n_eval"] == 8
    assert r["steps"] == 2 * 5 and 1 <= r["best_step"] <= r["steps"] and not r["stopped_early"]
    saved = json.loads((tmp_path / "cola" / "result.json").read_text())
    assert saved == r
    preds = json.loads((tmp_path / "cola" / "predictions.json").read_text())
    assert matthews_corrcoef(preds["labels"], preds["predictions"]) == pytest.approx(r["score"])
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    saved_model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cola" / "model")
    assert saved_model.config.num_labels == 2 and AutoTokenizer.from_pretrained(tmp_path / "cola" / "model")
    again = finetune_task(llama_dir, FIX / "glue_2023", "cola", QUICK, device="cpu")
    drop = ("seconds",)
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in r.items() if k not in drop}


def test_early_stopping_mnli_mm_and_msgs(llama_dir, gpt2_dir):
    hp = QUICK.model_copy(update={"epochs": 30, "eval_every": 1, "patience": 1, "holdout_fraction": 0.2})
    r = finetune_task(gpt2_dir, FIX / "glue_2023", "mnli-mm", hp, device="cpu")
    assert r["stopped_early"] and r["steps"] < 30 * 3 and r["n_eval"] == 5
    assert r["eval_file"].endswith("mnli.validation_mismatched.json")
    r = finetune_task(llama_dir, FIX / "msgs", "main_verb_control", QUICK.model_copy(update={"max_train_examples": 10}),
                      device="cpu")
    assert r["metric"] == "mcc" and r["n_eval"] == 5 and r["n_train"] + r["n_holdout"] == 10


def test_absent_tasks_are_skipped_and_bad_input_is_named(llama_dir, tmp_path, capsys):
    r = finetune_task(llama_dir, FIX / "glue_2023", "rte", QUICK, out=tmp_path / "rte", device="cpu")
    assert set(r) == {"task", "skipped"} and "no train file for rte" in r["skipped"]
    assert json.loads((tmp_path / "rte" / "result.json").read_text()) == r
    with pytest.raises(UserError, match="unknown fine-tuning task 'glue'"):
        finetune_task(llama_dir, FIX / "glue_2023", "glue", QUICK)
    with pytest.raises(UserError, match="folder not found"):
        finetune_task(llama_dir, tmp_path / "nope", "cola", QUICK)
    with pytest.raises(UserError, match=r"cola\.train\.json: line 2: label 5 is not a class id in 0\.\.1"):
        finetune_task(llama_dir, FIX / "bad", "cola", QUICK, device="cpu")
    with pytest.raises(UserError, match=r"sst2\.train\.json: line 2: missing field 'sentence'"):
        finetune_task(llama_dir, FIX / "bad", "sst2", QUICK, device="cpu")
    with pytest.raises(UserError, match="no config.json"):
        finetune_task(tmp_path, FIX / "glue_2024", "sst2", QUICK, device="cpu")


def test_finetune_cli(gpt2_dir, tmp_path, capsys):
    assert main(["finetune", "--model", str(gpt2_dir), "--data", str(FIX / "glue_2024"), "--task", "sst2",
                 "--epochs", "1", "--batch-size", "4", "--eval-every", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])
    assert printed["task"] == "sst2" and printed["metric"] == "accuracy" and printed["n_eval"] == 4
    assert main(["finetune", "--model", str(tmp_path), "--data", str(FIX / "glue_2024"), "--task", "sst2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("babyllama: error:") and "Traceback" not in err


def test_babylm_selection_on_validation_by_f1_with_pairs_concatenated(llama_dir):
    from babyllama.config import load_config

    ev = load_config(None, ["eval.protocol=babylm-2024", "eval.finetune_defaults.epochs=2",
                            "eval.finetune_defaults.batch_size=4", "eval.finetune_defaults.lr=1e-3"]).eval
    hp = ev.finetune_hparams("mrpc")
    r = finetune_task(llama_dir, FIX / "glue_2024", "mrpc", hp, device="cpu")
    assert r["selected_on"] == "validation" and r["selection_metric"] == "f1" and r["n_holdout"] == 0
    steps_per_epoch = -(-r["n_train"] // 4)
    assert r["best_step"] % steps_per_epoch == 0  # evaluated at epoch ends only
    r = finetune_task(llama_dir, FIX / "glue_2023", "cola", ev.finetune_hparams("cola"), device="cpu")
    assert r["metric"] == "mcc" and r["selection_metric"] == "f1"  # reported on MCC, selected on F1, as in 2023/2024
    model_tok = load_tokenizer(llama_dir)
    joined = encode_examples(model_tok, [["The cat", "sees the dog."]], None, max_len=64)[0]
    parts = [model_tok(t, add_special_tokens=False)["input_ids"] for t in ("The cat", "sees the dog.")]
    assert joined == parts[0] + parts[1]  # pair_join: concat — nothing between the segments
