"""`babyllama export --format babylm-submission` and `babyllama check-submission`: the organisers' layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from babyllama.cli import main
from babyllama.config import load_config
from babyllama.errors import UserError
from babyllama.evaluate.blimp import load_pairs
from babyllama.evaluate.registry import current_inputs, jobs, write_result
from babyllama.export.submission_check import check_submission
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"
M = 1_000_000


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `babyllama run` leaves it: config, the student, its results and two kept checkpoints."""
    root = tmp_path_factory.mktemp("sub")
    out = root / "run"
    tree = {"out_dir": str(out), "student": {"name": "student", "arch": "llama", "hidden_size": 16, "num_layers": 1,
                                             "num_heads": 2, "intermediate_size": 32,
                                             "train": {"save_at_words": "babylm"}},
            "teachers": [], "eval": {"protocol": "babylm-2025", "perplexity": False, "blimp": str(FIX / "blimp_2024"),
                                     "ewok": str(FIX / "ewok"),
                                     "finetune": ["sst2"], "finetune_data": str(FIX / "glue_2024"),
                                     "finetune_defaults": {"lr": 1e-3, "batch_size": 4, "epochs": 1, "seed": 1}}}
    cfg_path = root / "exp.yaml"
    cfg_path.write_text(yaml.safe_dump(tree))
    for words in (M, 2 * M):
        make_model_dir(out / "checkpoints" / "student" / "at_words" / str(words), "llama", seed=words // M)
    assert main(["evaluate", "curve", str(cfg_path)]) == 0  # also writes <out>/config.yaml (the resolved config)
    model = make_model_dir(out / "models" / "student", "llama", seed=7)
    (model / "training_summary.json").write_text(json.dumps({"words_seen": 2.5 * M, "params": 1}))
    cfg = load_config(cfg_path)
    for _, job in jobs(cfg):  # the final model's results, written as the run's evaluate stage writes them
        if job.file in ("blimp.json", "finetune/sst2.json"):
            inputs = current_inputs(cfg, "student", job)
            write_result(cfg, "student", job, inputs, job.run(model))
    return out


def test_export_writes_the_official_layout_and_it_checks(run_dir, tmp_path, capsys):
    to = tmp_path / "submission"
    assert main(["export", str(run_dir / "models" / "student"), "--format", "babylm-submission", "--to", str(to)]) == 0
    assert sorted(p.name for p in to.iterdir()) == ["README.md", "chck_1M", "chck_2M", "main", "results", "submission.json"]
    res = to / "results" / "student"
    blimp = json.loads((res / "main/zero_shot/causal/blimp/blimp_filtered/predictions.json").read_text())
    pairs, _ = load_pairs(FIX / "blimp_2024")
    assert sum(len(v["predictions"]) for v in blimp.values()) == len(pairs)
    good = {p.good for p in pairs}
    result = json.loads((run_dir / "eval" / "student" / "blimp.json").read_text())
    picked_good = sum(p["pred"] in good for v in blimp.values() for p in v["predictions"])
    assert picked_good == round(result["accuracy"] * len(pairs))  # the predictions are the scored decisions
    assert (res / "main/zero_shot/causal/blimp/blimp_filtered/best_temperature_report.txt").read_text().startswith(
        "TEMPERATURE: 1.00")
    sst2 = json.loads((res / "main/finetune/sst2/predictions.json").read_text())["sst2"]["predictions"]
    assert len(sst2) == 4 and all(isinstance(p["pred"], int) for p in sst2)
    assert "accuracy: " in (res / "main/finetune/sst2/results.txt").read_text()
    for rev in ("chck_1M", "chck_2M"):
        assert (res / rev / "zero_shot/causal/blimp/blimp_fast/predictions.json").is_file()
        assert (res / rev / "zero_shot/causal/ewok/ewok_fast/predictions.json").is_file()
        assert (to / rev / "model.safetensors").is_file()
    collated = json.loads((res / "all_full_preds_and_fast_scores_causal.json").read_text())
    assert set(collated) == {"blimp", "glue", "fast_eval_results"} and len(collated["fast_eval_results"]["blimp"]) == 2
    card = (to / "README.md").read_text()
    assert "babylm-2025" in card and "evaluation-pipeline-2025" in card and "| sst2 (fine-tuned) |" in card
    assert "wug_adj" in card and "GLUE (mean accuracy of the 1 tasks above)" in card
    capsys.readouterr()
    assert main(["check-submission", str(to)]) == 0
    assert "2 checkpoints" in capsys.readouterr().out


def _broken(src: Path, tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(src, dest)
    return dest


def test_check_names_the_first_bad_or_missing_piece(run_dir, tmp_path, capsys):
    good = tmp_path / "good"
    assert main(["export", str(run_dir / "models" / "student"), "--format", "babylm-submission", "--to", str(good)]) == 0
    check_submission(good)
    bad = _broken(good, tmp_path, "no-ckpt")
    shutil.rmtree(bad / "chck_2M")
    with pytest.raises(UserError, match=r"^chck_2M/: missing; the strict-small schedule"):
        check_submission(bad)
    bad = _broken(good, tmp_path, "bad-id")
    path = bad / "results/student/main/finetune/sst2/predictions.json"
    data = json.loads(path.read_text())
    data["sst2"]["predictions"][1]["id"] = "sst2_7"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"finetune/sst2/predictions\.json: sst2: predictions\[1\]: id 'sst2_7'"):
        check_submission(bad)
    bad = _broken(good, tmp_path, "no-pred")
    path = bad / "results/student/chck_1M/zero_shot/causal/blimp/blimp_fast/predictions.json"
    data = json.loads(path.read_text())
    del next(iter(data.values()))["predictions"][0]["pred"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"chck_1M/.*blimp_fast/predictions\.json: .*predictions\[0\]: missing field 'pred'"):
        check_submission(bad)
    bad = _broken(good, tmp_path, "no-card")
    (bad / "README.md").unlink()
    capsys.readouterr()
    assert main(["check-submission", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "README.md: missing" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_export_refuses_a_submission_missing_a_checkpoint(run_dir, tmp_path, capsys):
    summary = run_dir / "models" / "student" / "training_summary.json"
    kept = summary.read_text()
    summary.write_text(json.dumps({"words_seen": 3.5 * M}))
    try:
        to = tmp_path / "sub"
        assert main(["export", str(run_dir / "models" / "student"), "--format", "babylm-submission", "--to", str(to)]) == 2
        assert "chck_3M/: missing" in capsys.readouterr().err and not to.exists()
    finally:
        summary.write_text(kept)
