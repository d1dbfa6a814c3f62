"""The fault catalogue, part two: every number shown comes from files verified on read.

One tiny finished run is made once for the module (`babyllama run`, a few seconds) and copied for each
case that damages it; cases that need no trained model use fake folders. Each case names the cause it
covers: a result deleted, corrupted or stale; a model folder whose files no longer match checkpoint.json;
a sweep plan the command line disagrees with; a weight index pointing out of the model folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from babyllama.cli import main
from babyllama.config import load_config
from conftest import tiny_config_dict, write_text_corpus
from test_faults import assert_one_line

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _tree(out: Path, corpus: Path) -> dict:
    tree = tiny_config_dict(out, corpus)
    for m in [*tree["teachers"], tree["student"]]:
        m["train"]["max_steps"] = 3
    tree["eval"] = {"blimp": str(FIXTURES / "blimp_original")}
    return tree


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished `babyllama run` (its folder holds config.yaml: `report` and copies work from it alone)."""
    root = tmp_path_factory.mktemp("finished")
    corpus = write_text_corpus(root / "corpus")
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(_tree(root / "run", corpus)))
    assert main(["run", str(path)]) == 0
    return root / "run"


@pytest.fixture
def run_copy(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, with its config pointing at the copy."""
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    tree = yaml.safe_load((out / "config.yaml").read_text())
    tree["out_dir"] = str(out)
    (out / "config.yaml").write_text(yaml.safe_dump(tree))
    return out


def _summary(out: Path) -> dict:
    from babyllama.report import summarize

    return {m["name"]: m for m in summarize(out)["models"]}


# -- 1. results are verified where they are read -----------------------------------------------------------


def test_deleted_results_are_recomputed_by_run_not_skipped(run_copy: Path, capsys) -> None:
    before = _summary(run_copy)["student"]["dev_ce"]
    shutil.rmtree(run_copy / "eval")
    capsys.readouterr()
    assert main(["run", str(run_copy / "config.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "evaluate: up to date, skipped" not in printed and "[run] evaluate student: perplexity" in printed
    assert _summary(run_copy)["student"]["dev_ce"] == before


def test_a_corrupted_result_is_not_filled_from_the_training_dev_loss(run_copy: Path, capsys) -> None:
    (run_copy / "eval" / "student" / "perplexity.json").write_text('{"ce_nats_per_token": 0.5')  # cut short
    assert main(["report", str(run_copy)]) == 0
    student = _summary(run_copy)["student"]
    assert student["dev_ce_source"] == "training" and student["dev_perplexity"] is None
    report = (run_copy / "report.md").read_text()
    assert f"{student['dev_ce']:.4f} (train)" in report and "perplexity.json`: damaged" in report
    # the verdict never compares the student's training estimate with the others' full-dev CE
    assert not any("student beat" in v or "did NOT beat" in v for v in _verdict(run_copy))
    capsys.readouterr()
    assert main(["run", str(run_copy / "config.yaml")]) == 0  # and `run` computes it again
    assert "perplexity.json is damaged" in capsys.readouterr().out
    assert _summary(run_copy)["student"]["dev_ce_source"] == "evaluate"


def _verdict(out: Path) -> list[str]:
    from babyllama.report import summarize

    return summarize(out)["verdict"]


def test_a_result_of_other_weights_is_stale(run_copy: Path) -> None:
    result = run_copy / "eval" / "student-control" / "blimp.json"
    other = json.loads((run_copy / "eval" / "t-llama" / "blimp.json").read_text())
    result.write_text(json.dumps(other))  # a plausible result, but computed from the teacher's files
    assert "BLiMP %" not in _summary(run_copy)["student-control"]["scores"]
    assert main(["report", str(run_copy)]) == 0
    assert "blimp.json`: stale (the model's files changed" in (run_copy / "report.md").read_text()


def test_after_a_failed_redo_the_old_model_is_not_shown_under_the_new_config(run_copy: Path) -> None:
    state_path = run_copy / "run_state.json"
    state = json.loads(state_path.read_text())
    state["control"] = {"fingerprint": "the-new-config", "done": False, "seconds": 0.0}  # redo started, then failed
    state_path.write_text(json.dumps(state))
    control = _summary(run_copy)["student-control"]
    assert control["dev_ce"] is None and control["scores"] == {} and control["steps"] is None
    assert main(["report", str(run_copy)]) == 0
    assert "has not finished; " in (run_copy / "report.md").read_text()


# -- 2. the sweep's plan is the truth ----------------------------------------------------------------------


def test_a_collected_member_with_a_corrupted_result_is_named_not_dropped(run_copy: Path) -> None:
    from babyllama.sweep_report import read_member

    cfg = load_config(run_copy / "config.yaml")
    assert isinstance(read_member(cfg), tuple)  # a finished run is a complete member
    (run_copy / "eval" / "t-gpt2" / "blimp.json").write_bytes(b"\x00garbage")
    assert read_member(cfg) == "eval/t-gpt2/blimp.json is damaged (not valid JSON)"


def test_collect_under_a_changed_config_does_not_count_the_old_members(run_copy: Path) -> None:
    from babyllama.sweep_report import read_member

    changed = load_config(run_copy / "config.yaml", ["student.train.lr=0.01"])
    assert read_member(changed) == "its stage distill ran under another config or data"


def _sweep_config(tmp_path: Path, text_corpus: Path, **sweep) -> str:
    tree = _tree(tmp_path / "run", text_corpus)
    tree["sweep"] = sweep
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_member_follows_the_plan_and_refuses_a_config_that_left_it(tmp_path, text_corpus, capsys) -> None:
    cfg = _sweep_config(tmp_path, text_corpus)
    assert main(["sweep", cfg, "--plan", "--seeds", "3"]) == 0
    capsys.readouterr()
    assert main(["sweep", cfg, "--member", "2", "--set", "student.train.lr=0.01"]) == 2
    assert_one_line(capsys.readouterr().err, "no longer gives member default-s9 the config planned for it")
    assert not (tmp_path / "run" / "sweep" / "default-s9").exists()


def test_member_takes_the_out_dir_lock_of_the_shared_folders(tmp_path, text_corpus, capsys) -> None:
    from babyllama.lock import out_dir_lock

    cfg = _sweep_config(tmp_path, text_corpus)
    with out_dir_lock(tmp_path / "run", "babyllama run (another command)"):
        assert main(["sweep", cfg, "--member", "0", "--seeds", "1"]) == 2
    assert_one_line(capsys.readouterr().err, "is in use by another babyllama command")
    assert not (tmp_path / "run" / "models").exists()


def test_grid_without_a_student_is_refused_at_plan(tmp_path, text_corpus, capsys) -> None:
    cfg = _sweep_config(tmp_path, text_corpus, grid={"student": [None]})
    assert main(["sweep", cfg, "--plan"]) == 2
    assert_one_line(capsys.readouterr().err, "leaves no student")


def test_sweep_jobs_members_stop_with_their_parent() -> None:
    from babyllama.sweep import ChildProcesses

    children = ChildProcesses()
    codes: list[int] = []
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        children.map(lambda i: codes.append(children.call(slow)) or 0, range(3), 2)
    assert time.monotonic() - t0 < 30
    assert codes == [-signal.SIGTERM] * 3  # the two running were stopped, the third never started a process


# -- 3. model folders are verified on every read ------------------------------------------------------------


def _flip_weight_byte(folder: Path) -> None:
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x55  # a weight, not the header: the file still loads
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("verb", ["evaluate", "export"])
def test_a_flipped_weight_byte_is_refused_by_evaluate_and_export(run_copy: Path, tmp_path, verb, capsys) -> None:
    model = tmp_path / "student"
    shutil.copytree(run_copy / "models" / "student", model)
    _flip_weight_byte(model)
    argv = (["evaluate", "blimp", "--model", str(model), "--data", str(FIXTURES / "blimp_original")] if verb == "evaluate"
            else ["export", str(model), "--to", str(tmp_path / "hub"), "--format", "hf"])
    assert main(argv) == 2
    assert_one_line(capsys.readouterr().err, "model.safetensors: does not match the sha256")
    assert not (tmp_path / "hub").exists()


def test_export_refuses_a_weight_index_pointing_out_of_the_folder(run_copy: Path, tmp_path, capsys) -> None:
    model = tmp_path / "student"
    shutil.copytree(run_copy / "models" / "student", model)
    (model / "checkpoint.json").unlink()
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../../../../../../etc/passwd"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    assert main(["export", str(model), "--to", str(tmp_path / "hub"), "--format", "hf"]) == 2
    assert_one_line(capsys.readouterr().err, "not a file of the model folder; refused")
    assert not (tmp_path / "hub").exists()


@pytest.mark.parametrize("damage", ["config", "tokenizer", "header"])
def test_export_validates_config_tokenizer_and_weights_before_writing(run_copy, tmp_path, damage, capsys) -> None:
    model = tmp_path / "student"
    shutil.copytree(run_copy / "models" / "student", model)
    (model / "checkpoint.json").unlink()  # hand-edited folders: the files themselves are checked
    if damage == "config":
        (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": "wide"}))
    elif damage == "tokenizer":
        (model / "tokenizer.json").write_text('{"model": {"type": "nonsense"}}')
    else:
        data = bytearray((model / "model.safetensors").read_bytes())
        data[8:24] = b"\xff" * 16
        (model / "model.safetensors").write_bytes(bytes(data))
    assert main(["export", str(model), "--to", str(tmp_path / "hub"), "--format", "hf"]) == 2
    assert_one_line(capsys.readouterr().err, {"config": "config.json", "tokenizer": "tokenizer.json",
                                              "header": "model.safetensors"}[damage])
    assert not (tmp_path / "hub").exists()


def test_a_damaged_best_checkpoint_is_fixed_by_one_round_of_advice(run_copy: Path, capsys) -> None:
    ck = run_copy / "checkpoints" / "t-llama"
    _flip_weight_byte(ck / "best")
    shutil.rmtree(run_copy / "models" / "t-llama")
    cfg = str(run_copy / "config.yaml")
    assert main(["train", cfg, "--model", "t-llama"]) == 2
    err = capsys.readouterr().err
    assert_one_line(err, f"delete {ck} and train again")
    shutil.rmtree(ck)  # exactly what it says
    assert main(["train", cfg, "--model", "t-llama"]) == 0


def test_the_card_names_the_sampled_cache(run_copy: Path) -> None:
    from babyllama.export.card import render_card
    from babyllama.export.record import load_record

    rec = load_record(run_copy / "models" / "student")
    rec.training = {**(rec.training or {}), "objective": {"objective": "distill", "teachers": [], "cache": {
        "enabled": True, "mode": "sample", "samples": 32, "top_k": None}}}
    card = render_card(rec, license_="apache-2.0", language="en")
    assert "sampled cache (32 tokens drawn per position)" in card and "top-None" not in card
