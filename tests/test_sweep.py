"""`babyllama sweep`: members sharing data, teachers and cache; resume after a kill; plan/member/collect;
ablation grids, teacher subsets and per-seed teachers; identical numbers for identical members."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from babyllama.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _write_config(tmp_path: Path, tiny_cfg, blimp: bool = True, **sweep) -> Path:
    tree = tiny_cfg.model_dump(mode="json")
    tree["distill"]["cache"]["enabled"] = True
    tree["eval"]["blimp"] = str(FIXTURES / "blimp_original") if blimp else None
    tree["sweep"].update(sweep)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _adopted(model: Path, source: Path) -> bool:
    """The member's model is a copy of ``source`` (hard-linked weights), never a symlink a later run could change."""
    return (not model.is_symlink() and (model / "model.safetensors").is_file()
            and os.path.samefile(model / "model.safetensors", source / "model.safetensors"))


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def _sweep_json(out: Path) -> dict:
    return json.loads((out / "sweep" / "sweep.json").read_text())


def _student(result: dict, member: str) -> dict:
    row = next(r for r in result["members"] if r["name"] == member)
    return {v["role"]: v for v in row["models"].values()}


def test_sweep_after_run_reuses_it_and_resumes_after_a_kill(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg)
    out = Path(tiny_cfg.out_dir)
    assert main(["run", str(cfg_path)]) == 0  # what `make demo` leaves behind
    capsys.readouterr()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "babyllama", "sweep", str(cfg_path), "--seeds", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    before_kill = []
    for line in proc.stdout:  # kill as the third member starts: the first two are finished
        before_kill.append(line)
        if line.startswith("[sweep] member 3/3"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    before = "".join(before_kill)
    # the run's teachers, cache, student and control are the seed-7 member's: only seed 8 was trained
    first_member, second_member = before.split("[sweep] member 2/3")
    assert "teacher:t-llama: running" not in before
    # seeds 8 and 9 draw their own samples, both from the one teacher pass the first member makes
    assert first_member.count("windows with the teachers") == 1 and "one teacher pass for 2 caches, draw seeds 8, 9" in first_member
    assert "windows with the teachers" not in second_member
    assert f"[sweep] default-s7: distill is identical to the one in {out}: reused" in before
    assert _adopted(out / "sweep" / "default-s7" / "models" / "student", out / "models" / "student")
    second = out / "sweep" / "default-s8"
    stamps = {p: _mtime(p) for p in [second / "models" / "student" / "model.safetensors",
                                      second / "models" / "student-control" / "model.safetensors",
                                      out / "models" / "t-llama" / "model.safetensors"]}

    assert main(["sweep", str(cfg_path), "--seeds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "[run] distill: up to date, skipped" in printed.split("[sweep] member 3/3")[0]
    assert "[run] teacher:t-llama: running" not in printed
    assert all(_mtime(p) == t for p, t in stamps.items())  # nothing finished was trained again
    assert len([p for p in (out / "cache").iterdir() if p.is_dir()]) == 3  # each seed its own draws, built once
    # every member is an ordinary run directory (config, report) linked to the shared parts
    assert (second / "report.md").exists() and (second / "models" / "t-gpt2").resolve() == (out / "models" / "t-gpt2").resolve()
    assert yaml.safe_load((second / "config.yaml").read_text())["student"]["train"]["seed"] == 8

    result = _sweep_json(out)
    assert result["seeds"] == [7, 8, 9] and not result["missing"] and len(result["members"]) == 3
    ce = next(c for c in result["comparisons"] if c["metric"] == "dev_ce" and c["name"] == "student - control")
    diffs = [_student(result, m)["student"]["dev_ce"] - _student(result, m)["control"]["dev_ce"]
             for m in ("default-s7", "default-s8", "default-s9")]
    assert list(ce["per_seed"].values()) == diffs and ce["n"] == 3 and ce["ci"][0] <= ce["mean"] <= ce["ci"][1]
    blimp = next(c for c in result["comparisons"] if c["metric"] == "blimp")
    assert blimp["bootstrap_ci"] is not None
    # one sign convention: the verdict states student - control with the sign the table shows
    line = next(v for v in result["verdict"] if "dev CE: " in v and "student - control =" in v)
    assert f"student - control = {ce['mean']:+.3f} nats/token [{ce['ci'][0]:+.3f}, {ce['ci'][1]:+.3f}]" in line
    tested = [c for c in result["comparisons"] if c["p"] is not None]
    assert result["verdict"][0].startswith(f"{len(result['comparisons'])} comparisons were made ({len(tested)} with")
    assert all(c["p_holm"] >= c["p"] and c["survives_holm"] == (c["p_holm"] <= 0.05) for c in tested)
    assert any("Holm-adjusted p = " in line for line in result["verdict"])
    report = (out / "sweep" / "report.md").read_text()
    assert f"| student - control | dev CE (nats/token) | {ce['mean']:+.3f} |" in report
    assert "## What the intervals are conditional on" in report and "trained once and are shared" in report
    assert "| student - control | dev CE (nats/token) |" in report and "![forest plot](plots/forest.png)" in report
    assert "## Effect against the teacher-control gap" in report
    assert "data:image/png;base64," in (out / "sweep" / "report.html").read_text()
    assert "95% interval (t over seeds)" in printed and str(out / "sweep" / "sweep.json") in printed


def test_plan_member_and_collect_and_identical_members_give_identical_numbers(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg)
    out = Path(tiny_cfg.out_dir)
    assert main(["sweep", str(cfg_path), "--seeds", "2", "--plan"]) == 0
    plan = json.loads((out / "sweep" / "plan.json").read_text())
    assert [m["name"] for m in plan["members"]] == ["default-s7", "default-s8"]
    assert not (out / "models").exists()  # planning trains nothing
    assert main(["sweep", str(cfg_path), "--seeds", "2", "--member", "5"]) == 2
    assert "members 0..1" in capsys.readouterr().err

    assert main(["sweep", str(cfg_path), "--seeds", "2", "--member", "1"]) == 0
    assert (out / "sweep" / "default-s8" / "models" / "student" / "model.safetensors").exists()
    assert not (out / "sweep" / "default-s7").exists()
    assert main(["sweep", str(cfg_path), "--seeds", "2", "--collect"]) == 0
    assert "Not counted: default-s7: not finished" in capsys.readouterr().out
    result = _sweep_json(out)
    assert result["missing"] == ["default-s7"] and result["comparisons"][0]["ci"] is None  # one seed: no interval
    assert result["verdict"][0].startswith("2 comparisons were made (0 with two or more seeds")
    assert any(v.startswith("dev CE:") and "one seed" in v for v in result["verdict"])

    # The same member (seed and config) run from scratch elsewhere gives identical numbers, BLiMP items included.
    other = tmp_path / "again"
    assert main(["sweep", str(cfg_path), "--seeds", "2", "--member", "1", "--set", f"out_dir={other}"]) == 0
    for name in ("student", "student-control"):
        for file, key in (("perplexity.json", "ce_nats_per_token"), ("blimp.json", "items")):
            a, b = (json.loads((root / "sweep" / "default-s8" / "eval" / name / file).read_text()) for root in (out, other))
            assert a[key] == b[key]


def test_jobs_run_members_as_parallel_processes(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg, blimp=False)
    out = Path(tiny_cfg.out_dir)
    assert main(["sweep", str(cfg_path), "--seeds", "2", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "default-s7 done" in printed and "default-s8 done" in printed
    for member in ("default-s7", "default-s8"):
        assert "[run] distill: done" in (out / "sweep" / member / "sweep.log").read_text()
        assert "[run] teacher:t-llama: up to date" in (out / "sweep" / member / "sweep.log").read_text()
    assert len(_sweep_json(out)["members"]) == 2


def test_grid_and_teacher_subsets_reuse_identical_models(tmp_path: Path, tiny_cfg, capsys) -> None:
    # log_every changes no weights: that member reuses the default member's student and control.
    cfg_path = _write_config(tmp_path, tiny_cfg, grid={"student.train.log_every": [1, 3]}, teacher_subsets=[["t-llama"]])
    out = Path(tiny_cfg.out_dir)
    assert main(["sweep", str(cfg_path), "--seeds", "1"]) == 0
    printed = capsys.readouterr().out
    result = _sweep_json(out)
    names = [r["name"] for r in result["members"]]
    assert names == ["default-s7", "teachers=t-llama-s7", "student.train.log_every=3-s7",
                     "student.train.log_every=3+teachers=t-llama-s7"]
    same = out / "sweep" / "student.train.log_every=3-s7"
    default = out / "sweep" / "default-s7" / "models"
    assert _adopted(same / "models" / "student", default / "student")
    assert _adopted(same / "models" / "student-control", default / "student-control")
    assert f"[sweep] {same.name}: distill is identical to the one in {out / 'sweep' / 'default-s7'}: reused" in printed
    assert _student(result, "default-s7") == _student(result, same.name)
    subset = out / "sweep" / "teachers=t-llama-s7"
    assert [t["name"] for t in yaml.safe_load((subset / "config.yaml").read_text())["teachers"]] == ["t-llama"]
    assert not _adopted(subset / "models" / "student", default / "student")
    assert _adopted(subset / "models" / "student-control", default / "student-control")
    assert len([p for p in (out / "cache").iterdir() if p.is_dir()]) == 2  # one cache per teacher set
    assert not (out / "sweep" / "teachers").exists()  # same teachers throughout: trained once, in out_dir
    ablation = [c for c in result["comparisons"] if c["name"] == "student.train.log_every=3 - default (student)"]
    assert ablation and all(c["mean"] == 0 for c in ablation)
    assert any(c["name"] == "teachers=t-llama - default (student)" for c in result["comparisons"])


def test_per_seed_teachers_and_teacher_axes_train_each_teacher_config_once(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg, blimp=False, teacher_seeds="per_seed",
                             grid={"teachers.*.train.max_steps": [6, 4]})
    out = Path(tiny_cfg.out_dir)
    assert main(["sweep", str(cfg_path), "--seeds", "2", "--plan"]) == 0
    assert main(["sweep", str(cfg_path), "--seeds", "2"]) == 0
    printed = capsys.readouterr().out
    homes = sorted(p for p in (out / "sweep" / "teachers").iterdir() if p.is_dir())
    assert len(homes) == 3  # seed 7 with 6 steps is the config's own teachers, in out_dir
    assert printed.count("[run] teacher:t-llama: running") == 4
    steps = {yaml.safe_load((h / "config.yaml").read_text())["teachers"][0]["train"]["max_steps"] for h in homes}
    assert steps == {4, 6}
    result = _sweep_json(out)
    assert len(result["members"]) == 4 and result["conditions"]
    gaps = {r["setting"]: r["teacher_gap"] for r in result["settings"]}
    assert set(gaps) == {"default", "teachers.*.train.max_steps=4"} and gaps["default"] != gaps["teachers.*.train.max_steps=4"]
    assert any(c["name"] == "teachers.*.train.max_steps=4 - default (student)" for c in result["comparisons"])


def test_sweep_config_mistakes_are_one_line(tmp_path: Path, tiny_cfg, capsys) -> None:
    cfg_path = _write_config(tmp_path, tiny_cfg, grid={"data.seq_len": [8, 16]})
    assert main(["sweep", str(cfg_path), "--plan"]) == 2
    assert "only keys under distill, student, teachers or control can vary" in capsys.readouterr().err
    cfg_path = _write_config(tmp_path, tiny_cfg, teacher_subsets=[["nobody"]])
    assert main(["sweep", str(cfg_path), "--plan"]) == 2
    assert "sweep.teacher_subsets" in capsys.readouterr().err
    cfg_path = _write_config(tmp_path, tiny_cfg, grid={"distill.alpah": [0.1]})
    assert main(["sweep", str(cfg_path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "distill.alpah" in err and "unknown key" in err and "Traceback" not in err
