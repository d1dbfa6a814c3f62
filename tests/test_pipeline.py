"""`babyllama run`: the whole chain in miniature, skipping, forcing, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from babyllama.cli import main
from test_import_graph import modules_loaded_by

UNNEEDED_ON_A_FINISHED_RUN = ("transformers", "torch._dynamo", "matplotlib")

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _write_config(tmp_path: Path, tiny_cfg, **changes) -> Path:
    tree = tiny_cfg.model_dump(mode="json")
    tree["distill"]["cache"]["enabled"] = True
    tree["eval"]["blimp"] = str(FIXTURES / "blimp_original")
    for task in ("ewok", "entity_tracking", "comps"):
        tree["eval"][task] = str(FIXTURES / task)
    tree["student"]["train"]["save_at_words"] = [40, 120]  # learning curves for the student and the control
    for key, value in changes.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _stamps(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sorted((out / "models").glob("*/model.safetensors"))}


def test_run_whole_chain_then_skip_then_redo_what_changed(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg)
    out = Path(tiny_cfg.out_dir)
    assert main(["run", str(cfg_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("t-llama", "t-gpt2", "student", "student-control"):
        assert (out / "models" / name / "model.safetensors").exists()
        assert json.loads((out / "eval" / name / "perplexity.json").read_text())["ce_nats_per_token"] > 0
        assert 0 <= json.loads((out / "eval" / name / "blimp.json").read_text())["macro_phenomena"] <= 1
        for task in ("ewok", "entity_tracking", "comps"):
            assert 0 <= json.loads((out / "eval" / name / f"{task}.json").read_text())["headline"] <= 1
    report = (out / "report.md").read_text()
    assert "## Does distillation help?" in report and "| student | distilled student |" in report
    assert "| BLiMP % | EWoK % | entity tracking % | COMPS % |" in report
    assert "## Evaluation protocol: babyllama" in report and "| eval.ties | wrong |" in report
    for name in ("student", "student-control"):
        assert sorted(p.name for p in (out / "checkpoints" / name / "at_words").iterdir()) == ["120", "40"]
        points = json.loads((out / "eval" / name / "curve.json").read_text())["points"]
        assert [p["words"] for p in points] == [40, 120]
        assert all(p["dev_ce"] > 0 and 0 <= p["blimp"] <= 1 for p in points)
    assert "## Learning curves (train.save_at_words)" in report and (out / "plots" / "learning_curves.png").exists()
    assert not (out / "eval" / "t-llama" / "curve.json").exists() or not json.loads(
        (out / "eval" / "t-llama" / "curve.json").read_text())["points"]
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "Time per stage" in printed and str(out / "report.html") in printed
    # the console ends with the verdict, the sweep hint (one seed) and the report's path
    ending = printed[printed.index("Verdict (student - other model, one seed):"):]
    assert "Dev CE vs control student-control:" in ending and "paired over" in ending
    assert f"babyllama sweep {cfg_path} --seeds 3" in " ".join(ending.split())

    before = _stamps(out)
    assert main(["run", str(cfg_path)]) == 0
    again = capsys.readouterr().out
    assert "is up to date" in again  # prepare runs every time and skips its own work
    for stage in ("teacher:t-llama", "teacher:t-gpt2", "distill", "control", "evaluate"):
        assert f"[run] {stage}: up to date, skipped" in again
    assert _stamps(out) == before
    # Fixed costs (#24): the report of a finished run loads no torch, transformers or matplotlib (its
    # figures are unchanged), and `run` on it plans and skips without transformers or torch's compiler.
    assert modules_loaded_by(["report", str(out)], ("torch", "transformers", "matplotlib")) == []
    assert modules_loaded_by(["run", str(cfg_path)], UNNEEDED_ON_A_FINISHED_RUN) == []
    assert _stamps(out) == before

    # A changed student setting redoes the student and the control, never the teachers.
    assert main(["run", str(cfg_path), "--set", "student.train.lr=0.001"]) == 0
    changed = capsys.readouterr().out
    assert "[run] teacher:t-llama: up to date, skipped" in changed
    assert "[run] distill: redoing" in changed and "[run] control: redoing" in changed
    after = _stamps(out)
    assert after["t-llama"] == before["t-llama"] and after["student"] != before["student"]

    # Logging cadence does not change the weights: nothing is retrained for it.
    assert main(["run", str(cfg_path), "--set", "student.train.lr=0.001", "--set", "teachers.0.train.log_every=3"]) == 0
    assert "[run] teacher:t-llama: up to date, skipped" in capsys.readouterr().out

    # An edited corpus changes the prepared data, so every model is trained again.
    corpus = Path(tiny_cfg.data.corpus) / "part0.txt"
    corpus.write_text(corpus.read_text() + "A new line about the cat.\n")
    assert main(["run", str(cfg_path), "--set", "student.train.lr=0.001"]) == 0
    edited = capsys.readouterr().out
    assert "[run] teacher:t-llama: redoing" in edited and "[run] control: redoing" in edited


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg)
    out = Path(tiny_cfg.out_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "babyllama", "run", str(cfg_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:  # kill as soon as the distillation stage starts: both teachers are finished
        if line.startswith("[run] distill:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    teachers = _stamps(out)
    assert set(teachers) >= {"t-llama", "t-gpt2"}

    assert main(["run", str(cfg_path)]) == 0
    resumed = capsys.readouterr().out
    assert "[run] teacher:t-llama: up to date, skipped" in resumed
    assert "[run] teacher:t-gpt2: up to date, skipped" in resumed
    assert "[run] distill: resuming" in resumed
    stamps = _stamps(out)
    assert stamps["t-llama"] == teachers["t-llama"] and "student-control" in stamps
    assert (out / "report.md").exists()


def test_missing_evaluation_data_stops_the_run_before_any_training(tiny_cfg, tmp_path: Path, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg, **{"eval.blimp": str(tmp_path / "no-blimp")})
    assert main(["run", str(cfg_path)]) == 2
    err = capsys.readouterr().err
    assert "eval.blimp:" in err and "babyllama download blimp" in err and "--set eval.blimp=null" in err
    assert not (Path(tiny_cfg.out_dir) / "models").exists()


def test_force_names_a_stage(tiny_cfg, tmp_path: Path, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg)
    assert main(["run", str(cfg_path), "--force", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "--force 'nonsense': no such stage" in err and "t-gpt2" in err


def test_run_under_torchrun_trains_every_model_data_parallel(tmp_path: Path, tiny_cfg) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg)
    out = Path(tiny_cfg.out_dir)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a free port of its own; torchrun's default 29500 is shared by every run on the machine, so a
    # second suite (or any DDP job) running at the same time made this test fail at random (EADDRINUSE)
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "babyllama", "run",
                           str(cfg_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("t-llama", "t-gpt2", "student", "student-control"):
        start = json.loads((out / "models" / name / "metrics.jsonl").read_text().splitlines()[0])
        assert start["world_size"] == 2 and start["global_batch"] == 2 * tiny_cfg.model(name).train.batch_size
    assert (out / "report.html").exists() and done.stdout.count("Time per stage") == 1  # rank 0 only


def _side_by_side_config(tmp_path: Path, tiny_cfg, **changes) -> Path:
    """The tiny chain with its teachers trained side by side (even on one thread), the rest kept short."""
    short = {"eval.blimp": None, "eval.ewok": None, "eval.entity_tracking": None, "eval.comps": None,
             "distill.cache.enabled": False, "student.train.save_at_words": []}
    return _write_config(tmp_path, tiny_cfg, side_by_side=True, **{**short, **changes})


def test_a_failing_teacher_stops_the_other_in_one_line(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _side_by_side_config(tmp_path, tiny_cfg, **{"teachers.0.train.max_steps": 100000,
                                                           "teachers.0.train.epochs": 100000,
                                                           "teachers.1.train.lr": 1e12})
    out = Path(tiny_cfg.out_dir)
    assert main(["run", str(cfg_path)]) == 2
    captured = capsys.readouterr()
    assert "[run] teacher:t-llama, teacher:t-gpt2: side by side, 2 at a time, 1 CPU thread each" in captured.out
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1, captured.err
    assert errors[0].startswith("babyllama: error: teacher:t-gpt2: model 't-gpt2': the loss became NaN or infinite")
    assert errors[0].endswith("stopped teacher:t-llama, which resumes from the last checkpoint on the next run")
    assert not (out / "models" / "t-llama").exists()  # stopped long before its 100,000 steps
    state = json.loads((out / "run_state.json").read_text())
    assert not state["teacher:t-llama"]["done"] and "distill" not in state


def test_a_full_disk_in_one_side_by_side_teacher_is_one_line_exit_3_and_resumes(
        tmp_path: Path, tiny_cfg, file_size_limit, capsys) -> None:
    # the limit is inherited by the fork server and the teachers' processes forked from it: the configs,
    # logs and metrics fit, the teachers' weights and checkpoints (90-120 kB) do not
    cfg_path = _side_by_side_config(tmp_path, tiny_cfg)
    out = Path(tiny_cfg.out_dir)
    assert main(["prepare", str(cfg_path)]) == 0
    capsys.readouterr()
    file_size_limit(30_000)
    assert main(["run", str(cfg_path)]) == 3
    captured = capsys.readouterr()
    assert "side by side, 2 at a time" in captured.out
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "file too large" in errors[0], captured.err
    assert errors[0].startswith("babyllama: error: teacher:t-") and "; stopped teacher:t-" in errors[0]
    assert "Traceback" not in captured.err + captured.out
    left = list(out.rglob("*.tmp")) + list((out / "models").glob("*/model.safetensors"))
    assert not left, left
    file_size_limit(None)
    assert main(["run", str(cfg_path)]) == 0
    assert (out / "report.md").exists()
    assert all((out / "models" / name / "model.safetensors").is_file() for name in ("t-llama", "t-gpt2"))


def _descendants(pid: int) -> set[int]:
    """The processes below ``pid`` in the process tree (Linux /proc): a run's fork server and its stages."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended)."""
    running = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                running.add(pid)
        except (OSError, IndexError):
            continue
    return running


def test_killed_run_stops_its_side_by_side_teachers_then_resumes_and_skips(tmp_path: Path, tiny_cfg, capsys) -> None:
    import time

    long = {f"teachers.{i}.train.{k}": v for i in (0, 1) for k, v in (("max_steps", 150), ("epochs", 1000),
                                                                      ("save_every", 10))}
    cfg_path = _side_by_side_config(tmp_path, tiny_cfg, **long)
    out = Path(tiny_cfg.out_dir)
    proc = subprocess.Popen([sys.executable, "-m", "babyllama", "run", str(cfg_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if "side by side" in line:
            break
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "t-llama" / "last").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    below = _descendants(proc.pid)
    assert len(below) >= 3, below  # the fork server and the two teachers' processes forked from it
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while _alive(below) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(below) == set()  # the teachers and their fork server died with their run
    assert not (out / "models" / "t-llama").exists()

    assert main(["run", str(cfg_path)]) == 0
    resumed = capsys.readouterr().out
    assert "[run] teacher:t-llama: resuming" in resumed
    assert "[run] teacher:t-llama, teacher:t-gpt2: side by side, 2 at a time, 1 CPU thread each" in resumed
    assert "(2 teachers side by side)" in resumed and (out / "report.md").exists()
    assert not list(out.glob(".side_by_side*"))  # the stages' config copy, left by the kill, is gone
    for name in ("t-llama", "t-gpt2"):  # trained by `babyllama train` children, exactly as configured
        summary = json.loads((out / "models" / name / "training_summary.json").read_text())
        assert summary["steps"] == 150 and summary["threads"]["threads"] == 1
    # the children fitted the very identity the run records: nothing is redone
    assert main(["run", str(cfg_path)]) == 0
    again = capsys.readouterr().out
    assert "[run] teacher:t-llama: up to date, skipped" in again and "side by side," not in again
