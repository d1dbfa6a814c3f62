"""Fine-tuning as each BabyLM year's official script does it: the 2025/2026 token-0 head, drop_last, no clipping,
the accuracy headline and 10k subsampling; 2024's mnli-mm scored with the MNLI model itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from babyllama.config import load_config
from babyllama.evaluate.classifier import HEAD_FILE, TokenZeroClassifier
from babyllama.evaluate.finetune import classify_logits, encode_examples, finetune_task, load_classifier
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"
TINY = ["eval.finetune_defaults.epochs=2", "eval.finetune_defaults.batch_size=4", "eval.finetune_defaults.lr=1e-3"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("ftb-llama") / "m", "llama")


def _ev(protocol: str, *more: str):
    return load_config(None, [f"eval.protocol={protocol}", *TINY, *more]).eval


@pytest.mark.parametrize("protocol", ["babylm-2025", "babylm-2026"])
def test_2025_and_2026_presets_are_the_official_script(protocol):
    ev = load_config(None, [f"eval.protocol={protocol}"]).eval
    hp = ev.finetune_hparams("rte")
    assert (hp.head, hp.drop_last, hp.grad_clip, hp.report_metric) == ("babylm", True, None, "accuracy")
    assert (hp.lr, hp.batch_size, hp.epochs, hp.seed, hp.max_seq_length) == (3e-5, 32, 10, 42, 512)
    assert (hp.weight_decay, hp.warmup_fraction, hp.schedule, hp.select_on) == (0.01, 0.06, "cosine", "validation")
    assert ev.finetune_hparams("mnli").max_train_examples == 10_000 == ev.finetune_hparams("qqp").max_train_examples
    assert ev.finetune_hparams("boolq").batch_size == 16 and ev.finetune_hparams("wsc").epochs == 30
    assert ev.finetune_hparams("rte").max_train_examples is None
    ours = load_config(None, []).eval.finetune_hparams("rte")
    assert (ours.head, ours.drop_last, ours.grad_clip) == ("last_token", False, 1.0)
    explicit = load_config(None, [f"eval.protocol={protocol}", "eval.finetune_defaults.head=last_token"]).eval
    assert explicit.finetune_hparams("rte").head == "last_token"  # an explicit key wins over the preset


def test_babylm_head_pools_token_zero(llama_dir):
    torch.manual_seed(0)
    model, tok, pad_id, sep_id = load_classifier(llama_dir, 3, torch.device("cpu"), head="babylm")
    assert isinstance(model, TokenZeroClassifier)
    model.eval()
    seqs = encode_examples(tok, [["The cat sees the dog."], ["The cat sees the bird."], ["Who should Derek hug?"]],
                           sep_id, 64)
    with torch.no_grad():
        logits = classify_logits(model, seqs, pad_id)
        first = model.base(input_ids=torch.tensor([seqs[0][:1]])).last_hidden_state[0, 0]
        expected = model.head(first)
    torch.testing.assert_close(logits[0], expected, atol=1e-5, rtol=1e-5)
    # a causal model's token 0 sees only itself: two texts with the same first token get the same logits
    assert seqs[0][0] == seqs[1][0] and seqs[0] != seqs[1]
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[0], logits[2])
    names = [type(m).__name__ for m in model.head]
    assert names == ["LayerNorm", "Linear", "GELU", "LayerNorm", "Dropout", "Linear"]
    assert model.head[4].p == 0.1 and not model.head[0].elementwise_affine


def test_2025_run_drops_the_last_batch_and_reports_accuracy(llama_dir, tmp_path):
    ev = _ev("babylm-2025")
    hp = ev.finetune_hparams("sst2")
    r = finetune_task(llama_dir, FIX / "glue_2024", "sst2", hp, out=tmp_path / "sst2", device="cpu")
    n = r["n_train"]
    assert n == 16 and r["steps"] == 2 * (n // 4)
    assert r["metric"] == "accuracy" and r["score"] == r["metrics"]["accuracy"] and "f1" in r["metrics"]
    assert r["hp"]["head"] == "babylm" and r["hp"]["grad_clip"] is None
    assert (tmp_path / "sst2" / "model" / HEAD_FILE).is_file() and (tmp_path / "sst2" / "model" / "config.json").is_file()
    odd = finetune_task(llama_dir, FIX / "glue_2024", "sst2", hp.model_copy(update={"batch_size": 5}), device="cpu")
    assert odd["steps"] == 2 * (16 // 5)  # drop_last: 3 full batches per epoch, not 4
    kept = finetune_task(llama_dir, FIX / "glue_2024", "sst2",
                         hp.model_copy(update={"batch_size": 5, "drop_last": False}), device="cpu")
    assert kept["steps"] == 2 * 4
    clipped = finetune_task(llama_dir, FIX / "glue_2024", "sst2", hp.model_copy(update={"grad_clip": 1e-9}), device="cpu")
    assert clipped["steps"] == r["steps"] and clipped["hp"]["grad_clip"] == 1e-9


def test_2025_subsamples_to_max_train_examples(llama_dir):
    hp = _ev("babylm-2025", "eval.finetune_tasks.mnli.max_train_examples=8").finetune_hparams("mnli")
    r = finetune_task(llama_dir, FIX / "glue_2023", "mnli", hp, device="cpu")
    assert r["n_train"] == 8 and r["steps"] == 2 * 2


def test_2024_mnli_mm_is_the_mnli_model_scored_on_mismatched(llama_dir):
    ev = _ev("babylm-2024")
    hp = ev.finetune_hparams("mnli")
    assert hp.mnli_mm == "mnli_model"
    mnli = finetune_task(llama_dir, FIX / "glue_2023", "mnli", hp, device="cpu")
    mm = mnli["mismatched"]
    assert mm["n_eval"] == 5 and mm["eval_file"].endswith("mnli.validation_mismatched.json")
    alone = finetune_task(llama_dir, FIX / "glue_2023", "mnli-mm", ev.finetune_hparams("mnli-mm"), device="cpu")
    assert alone["selection_file"].endswith("mnli.validation_matched.json")  # selected as the MNLI model, not on mm
    assert alone["score"] == mm["score"] and alone["best_step"] == mnli["best_step"]
    own = finetune_task(llama_dir, FIX / "glue_2023", "mnli-mm",
                        ev.finetune_hparams("mnli-mm").model_copy(update={"mnli_mm": "own_model"}), device="cpu")
    assert own["selection_file"].endswith("mnli.validation_mismatched.json") and "mismatched" not in own


def test_2024_run_reuses_the_mnli_model_for_mnli_mm(llama_dir, tmp_path):
    from babyllama.evaluate.registry import current_inputs, jobs, write_result

    cfg = load_config(None, ["eval.protocol=babylm-2024", *TINY, f"out_dir={tmp_path}",
                             "eval.finetune=[mnli-mm, mnli]", f"eval.finetune_data={FIX / 'glue_2023'}"])
    todo = [j for e, j in jobs(cfg) if e.name == "finetune"]
    assert [j.file for j in todo] == ["finetune/mnli.json", "finetune/mnli-mm.json"]
    model_dir = tmp_path / "models" / "m"
    model_dir.parent.mkdir(parents=True)
    model_dir.symlink_to(llama_dir, target_is_directory=True)
    results = {}
    for job in todo:
        inputs = current_inputs(cfg, "m", job)
        results[job.file] = job.run(model_dir)
        write_result(cfg, "m", job, inputs, results[job.file])
    mm = results["finetune/mnli-mm.json"]
    assert mm["from_mnli_model"].endswith("mnli.json") and mm["score"] == results["finetune/mnli.json"]["mismatched"]["score"]
