"""The budget and compliance ledger: ``<out_dir>/ledger.json``, written by every `run` and `report`.

Per model: the words in its training pool, the words it saw with repetition and so its epochs (from
its training_summary.json once trained, else the config's plan, marked "planned"); for an external
teacher its type and size (config.json, safetensors headers). For the student, the words its teachers
saw are added as a second reading of the exposure cap. With ``data.rules`` set, every rule gets one
verdict line (babyllama.rules). A run that breaks a rule still runs: `run` prints the lines at its start,
and the report and the model card carry them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babyllama.config import Config, ModelConfig
from babyllama.errors import UserError
from babyllama.io import atomic_write_json, read_json
from babyllama.roles import Role, members
from babyllama.rules import ModelFacts, Verdict, check

LEDGER_FILE = "ledger.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _planned_words(model_cfg: ModelConfig, pool: int, manifest: dict, seq_len: int) -> float:
    """Words the config plans to show a model: epochs over the pool, or fewer when max_steps stops first
    (one process assumed; the finished run's own count replaces this figure)."""
    words = model_cfg.train.epochs * pool
    t = model_cfg.train
    if t.max_steps is not None:
        tokens = int(manifest["splits"]["train"]["tokens"]) or 1
        words = min(words, t.max_steps * t.batch_size * t.grad_accum * seq_len * pool / tokens)
    return words


def _external_facts(cfg: Config, name: str, spec: str) -> ModelFacts:
    from babyllama.existing import model_folder, model_info

    facts = ModelFacts(name, Role.EXTERNAL_TEACHER.short)
    try:
        info = model_info(model_folder(spec, f"teachers.{name}.from"))
    except (UserError, OSError, ValueError):
        return facts  # gone since the run: its verdict says "cannot tell"
    facts.parameters, facts.model_type, facts.shape = info.parameters, info.model_type, info.shape
    return facts


def gather(cfg: Config) -> tuple[int | None, list[ModelFacts]]:
    """(words in the training pool or None before prepare, facts of every model of ``cfg``)."""
    manifest = _read(cfg.data_dir / "manifest.json")
    pool = int(manifest["splits"]["train"]["words"]) if manifest and "splits" in manifest else None
    external = {t.name: t.from_ for t in cfg.external_teachers}
    out = []
    for m in members(cfg):
        if m.role is Role.EXTERNAL_TEACHER:
            out.append(_external_facts(cfg, m.name, external[m.name]))
            continue
        model_cfg = cfg.model(m.name)
        facts = ModelFacts(m.name, m.role.short, pool_words=pool, save_at_words=list(model_cfg.train.save_at_words))
        summary = _read(cfg.model_dir(m.name) / "training_summary.json")
        if summary and summary.get("words_seen") is not None:
            facts.words_seen, facts.parameters = float(summary["words_seen"]), summary.get("params")
        elif pool is not None and manifest is not None:
            facts.words_seen, facts.planned = _planned_words(model_cfg, pool, manifest, cfg.data.seq_len), True
        out.append(facts)
    return pool, out


def _model_row(f: ModelFacts) -> dict[str, Any]:
    row: dict[str, Any] = {"role": f.role, "pool_words": f.pool_words, "words_seen": f.words_seen,
                           "epochs": f.epochs, "planned": f.planned}
    if f.role == Role.EXTERNAL_TEACHER.short:
        row |= {"parameters": f.parameters, "model_type": f.model_type, "words_seen": None,
                "note": "trained elsewhere: its own training words are not known here and not counted"}
    return row


def build(cfg: Config) -> dict[str, Any]:
    """The ledger of ``cfg`` as it stands on disk (JSON-able)."""
    pool, facts = gather(cfg)
    verdicts = check(cfg.data.rules, cfg.data.word_budget, pool, facts)
    student = next((f for f in facts if f.role == Role.STUDENT.short), None)
    teachers_seen = [f.words_seen for f in facts if f.role == Role.TEACHER.short]
    with_teachers = None
    if student is not None and student.words_seen is not None and all(w is not None for w in teachers_seen):
        with_teachers = student.words_seen + sum(w for w in teachers_seen if w is not None)
    return {
        "rules": cfg.data.rules,
        "budget": cfg.data.word_budget,
        "pool_words": pool,
        "models": {f.name: _model_row(f) for f in facts},
        "student_with_teachers_words": with_teachers,
        "verdicts": [{"rule": v.rule, "verdict": v.verdict, "detail": v.detail} for v in verdicts],
        "breaks_rules": any(v.broken for v in verdicts),
    }


def write(cfg: Config) -> dict[str, Any]:
    ledger = build(cfg)
    atomic_write_json(cfg.out / LEDGER_FILE, ledger)
    return ledger


def verdict_lines(ledger: dict[str, Any]) -> list[str]:
    """One line per rule, as `run`, the report and the model card show them."""
    return [Verdict(v["rule"], v["verdict"], v.get("detail", "")).line() for v in ledger.get("verdicts", [])]


def announce(cfg: Config) -> dict[str, Any]:
    """Write the ledger and print its verdicts at the start of a run (a broken rule is said, not enforced)."""
    ledger = write(cfg)
    if ledger["rules"] == "none":
        return ledger
    print(f"[rules] {ledger['rules']}: " + ("this run BREAKS a rule; it runs anyway (see ledger.json)"
                                            if ledger["breaks_rules"] else "checked (see ledger.json)"), flush=True)
    for line in verdict_lines(ledger):
        print(f"[rules]   {line}", flush=True)
    return ledger
