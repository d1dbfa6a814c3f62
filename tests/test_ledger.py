"""The budget and compliance ledger (ledger.json) and the BabyLM 2026 rule verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from babyllama.cli import main
from babyllama.config import Config
from babyllama.rules import ModelFacts, approved_teacher, check, required_checkpoints


def _facts(words: float, teacher_words: float, save_at: list[float]) -> list[ModelFacts]:
    return [ModelFacts("t", "teacher", pool_words=9_000_000, words_seen=teacher_words),
            ModelFacts("s", "student", pool_words=9_000_000, words_seen=words, save_at_words=save_at)]


def test_verdicts_within_and_exceeding() -> None:
    marks = required_checkpoints(10_000_000, 100_000_000)
    assert marks[:3] == [1_000_000, 2_000_000, 3_000_000] and marks[-2:] == [90_000_000, 100_000_000] and len(marks) == 19
    lines = {v.rule: v for v in check("babylm-2026-strict-small", 10_000_000, 9_000_000,
                                      _facts(90_000_000, 20_000_000, [float(m) for m in marks[:18]]))}
    assert lines["word pool"].verdict == "within"
    assert lines["10-epoch cap (student)"].verdict == "within"
    assert lines["10-epoch cap (student + teachers)"].verdict == "exceeds by 10,000,000 words (student and teachers)"
    assert lines["required checkpoints"].verdict == "within"
    short = {v.rule: v for v in check("babylm-2026-strict-small", 10_000_000, 11_000_000, _facts(5_500_000, 1, []))}
    assert short["word pool"].verdict.startswith("exceeds by 1,000,000 words")
    assert short["required checkpoints"].verdict == "exceeds by 5 missing checkpoint(s)"
    unknown = {v.rule: v for v in check("babylm-2026-strict", 100_000_000, None, [])}
    assert all(v.verdict.startswith("cannot tell") for k, v in unknown.items() if k != "approved external teachers")
    assert check("none", 10, 5, []) == []


def test_external_teachers_by_type_and_size() -> None:
    small = ModelFacts("q", "external teacher", parameters=494_000_000, model_type="qwen2")
    qwen7 = ModelFacts("q7", "external teacher", parameters=7_600_000_000, model_type="qwen2")
    llama8 = ModelFacts("l8", "external teacher", parameters=8_000_000_000, model_type="llama", shape=(4096, 32, 128256))
    big = ModelFacts("m", "external teacher", parameters=7_200_000_000, model_type="mistral")
    assert [approved_teacher(t)[0] for t in (small, qwen7, llama8, big)] == [True, True, True, False]
    qwen14 = ModelFacts("q14", "external teacher", parameters=14_000_000_000, model_type="qwen2")
    assert approved_teacher(qwen14)[0] is False
    verdict = check("babylm-2026-strict-small", 10_000_000, 1, [small, big])[3]
    assert verdict.rule == "approved external teachers" and verdict.verdict == "exceeds by 1 teacher(s)"
    assert "m: mistral" in verdict.detail


def test_run_writes_the_ledger_and_says_a_broken_rule(tiny_cfg: Config, tmp_path: Path, capsys) -> None:
    tree = tiny_cfg.model_dump(mode="json", by_alias=True)
    tree["data"]["rules"] = "babylm-2026-strict-small"
    tree["data"]["word_budget"] = 1000  # the tiny corpus holds ~3,400 words: the pool rule breaks
    tree["control"] = False
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tree))
    assert main(["run", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "[rules] babylm-2026-strict-small: this run BREAKS a rule" in printed
    assert "[rules]   word pool: exceeds by" in printed
    out = Path(tiny_cfg.out_dir)
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["breaks_rules"] and ledger["pool_words"] > 1000
    student = ledger["models"]["student"]
    summary = json.loads((out / "models" / "student" / "training_summary.json").read_text())
    assert student["words_seen"] == summary["words_seen"] and not student["planned"]
    assert student["epochs"] == summary["words_seen"] / ledger["pool_words"]
    teachers = sum(ledger["models"][t]["words_seen"] for t in ("t-llama", "t-gpt2"))
    assert ledger["student_with_teachers_words"] == student["words_seen"] + teachers
    report = (out / "report.md").read_text()
    assert "Rules: babylm-2026-strict-small (this run BREAKS a rule)" in report and "word pool: exceeds by" in report
    assert main(["export", str(out / "models" / "student"), "--to", str(tmp_path / "hub"), "--format", "hf"]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "this run BREAKS a rule" in card and "With its teachers' words added" in card


def test_rules_set_the_budget_unless_it_is_given() -> None:
    from babyllama.config import DataConfig

    assert DataConfig(rules="babylm-2026-strict").word_budget == 100_000_000
    assert DataConfig(rules="babylm-2026-strict-small").word_budget == 10_000_000
    assert DataConfig(rules="babylm-2026-strict", word_budget=5).word_budget == 5
