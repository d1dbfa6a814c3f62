"""BabyLM checkpoint schedule (train.save_at_words: babylm) and `babyllama evaluate curve` over kept checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from babyllama.cli import main
from babyllama.config import Config, babylm_checkpoint_words
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"
M = 1_000_000


def _tree(tiny_cfg: Config, **changes) -> dict:
    tree = tiny_cfg.model_dump(mode="json")
    for key, value in changes.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return tree


def test_babylm_schedule_per_track(tiny_cfg):
    small = Config.model_validate(_tree(tiny_cfg, **{"student.train.save_at_words": "babylm"}))
    words = small.student.train.save_at_words
    assert words == [i * M for i in range(1, 10)] + [i * 10 * M for i in range(1, 11)] and len(words) == 19
    assert small.model(small.control_name).train.save_at_words == words  # the control keeps the same checkpoints
    strict = Config.model_validate(_tree(tiny_cfg, **{"student.train.save_at_words": "babylm",
                                                      "data.word_budget": 100 * M}))
    words = strict.student.train.save_at_words
    assert len(words) == 28 and words[-10:] == [i * 100 * M for i in range(1, 11)]
    assert babylm_checkpoint_words(10 * M)[-1] == 100 * M and babylm_checkpoint_words(100 * M)[-1] == 1000 * M
    with pytest.raises(Exception, match="save_at_words"):
        Config.model_validate(_tree(tiny_cfg, **{"student.train.save_at_words": "babylm-2025"}))


def _config_with_checkpoints(tmp_path: Path, tiny_cfg: Config, **changes) -> tuple[Path, Path]:
    tree = _tree(tiny_cfg, **{"student.train.save_at_words": "babylm", "eval.perplexity": False,
                              "eval.blimp": str(FIX / "blimp_original"), "eval.ewok": str(FIX / "ewok"), **changes})
    out = Path(tree["out_dir"])
    for name, seed in (("student", 0), ("student-control", 1)):
        for words in (1 * M, 2 * M):
            make_model_dir(out / "checkpoints" / name / "at_words" / str(words), "llama", seed=seed + words // M)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path, out


def test_evaluate_curve_scores_every_checkpoint_of_student_and_control(tmp_path, tiny_cfg, capsys):
    path, out = _config_with_checkpoints(tmp_path, tiny_cfg)
    assert main(["evaluate", "curve", str(path)]) == 0
    assert "student-control" in capsys.readouterr().out
    for name in ("student", "student-control"):
        curve = json.loads((out / "eval" / name / "curve.json").read_text())
        assert [p["words"] for p in curve["points"]] == [M, 2 * M] and set(curve["tasks"]) == {"blimp", "ewok"}
        for p in curve["points"]:
            assert 0 <= p["blimp"] <= 1 and 0 <= p["ewok"] <= 1
            assert p["results"]["blimp"]["headline"] == p["blimp"] and "paradigms" in p["results"]["blimp"]
    student = json.loads((out / "eval" / "student" / "curve.json").read_text())["points"]
    control = json.loads((out / "eval" / "student-control" / "curve.json").read_text())["points"]
    assert student[0]["results"]["blimp"]["items"] != control[0]["results"]["blimp"]["items"]  # two different models
    assert not (out / "eval" / "t-llama" / "curve.json").exists()  # teachers kept no checkpoints here


def test_evaluate_curve_uses_the_official_fast_sets(tmp_path, tiny_cfg):
    fast = tmp_path / "fast_eval"
    shutil.copytree(FIX / "blimp_2024", fast / "blimp_fast")
    path, out = _config_with_checkpoints(tmp_path, tiny_cfg, **{"eval.fast_data": str(fast)})
    assert main(["evaluate", "curve", str(path)]) == 0
    curve = json.loads((out / "eval" / "student" / "curve.json").read_text())
    assert curve["tasks"] == {"blimp": str(fast / "blimp_fast")}
    assert all("ewok" not in p for p in curve["points"])


def test_evaluate_curve_without_checkpoints_is_one_line(tmp_path, tiny_cfg, capsys):
    tree = _tree(tiny_cfg, **{"student.train.save_at_words": "babylm", "eval.perplexity": False})
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["evaluate", "curve", str(path)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoints under" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
