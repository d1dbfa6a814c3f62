"""What a run recorded about one model: the only source the model card may draw on.

A babyllama model folder sits at ``<out_dir>/models/<name>/``; the run around it holds the resolved config,
the data manifest (word-budget ledger), the evaluation results (read through the evaluation registry, as
the report and the sweep read them, so the card's headlines are theirs) and ``summary.json``
(environment). Every piece is optional: a model folder copied out of its run still exports, its card
just says less.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from babyllama.config import load_config
from babyllama.errors import UserError
from babyllama.evaluate.registry import headline_columns, headline_measures, model_headlines, model_results
from babyllama.roles import Role, members

WEIGHT_INDEX = "model.safetensors.index.json"


@dataclass
class ModelRecord:
    name: str
    model_dir: Path
    hf_config: dict[str, Any]
    weight_files: list[Path]
    training: dict[str, Any] | None = None  # training_summary.json
    run_dir: Path | None = None
    run_config: dict[str, Any] | None = None  # <out_dir>/config.yaml
    manifest: dict[str, Any] | None = None  # <out_dir>/data/manifest.json
    ledger: dict[str, Any] | None = None  # <out_dir>/ledger.json: words per model, rule verdicts
    environment: dict[str, Any] | None = None  # summary.json
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # registry.model_results
    headlines: dict[str, float] = field(default_factory=dict)  # registry.model_headlines (the protocol's)
    columns: dict[str, str] = field(default_factory=dict)  # registry.headline_columns: result key -> title
    measures: dict[str, tuple[str, str]] = field(default_factory=dict)  # registry.headline_measures
    protocol: str | None = None  # eval.protocol of the run
    run_role: Role | None = None  # the model's role in its run (roles.members)
    config_problem: str | None = None  # why the run's config.yaml could not be read (results then unknown)

    @property
    def arch(self) -> str:
        return str(self.hf_config.get("model_type", "?"))

    @property
    def role(self) -> str:
        """Teacher, distilled student, control, or plain LM: the run's roles, else what training recorded."""
        if self.run_role is not None:
            return self.run_role.value
        objective = (self.training or {}).get("objective", {})
        return Role.STUDENT.value if objective.get("objective") == "distill" else "language model (no distillation)"

    @property
    def finetune(self) -> dict[str, dict[str, Any]]:
        """{task: result} of the fine-tuning results that carry a score."""
        return {k.removeprefix("finetune/"): r for k, r in self.results.items()
                if k.startswith("finetune/") and "score" in r}


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def inside(model_dir: Path, name: str, what: str) -> Path:
    """``model_dir / name``, refused unless it is a plain name of a file in the folder itself (no path, no
    ``..``, no link out of it): an export copies only the model folder's own files."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"{model_dir / what}: names {name!r}, not a file of the model folder; refused")
    path = model_dir / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != model_dir.resolve()):
        raise UserError(f"{path}: is a link out of the model folder; refused (copy the file itself into it)")
    return path


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model folder (one file, or the shards its index names), each confined to it."""
    index = _json(model_dir / WEIGHT_INDEX)
    if index is not None:
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise UserError(f"{model_dir / WEIGHT_INDEX}: no 'weight_map' object naming the weight files")
        return [inside(model_dir, f, WEIGHT_INDEX) for f in sorted(set(map(str, weight_map.values())))]
    single = model_dir / "model.safetensors"
    return [inside(model_dir, single.name, "model.safetensors")] if single.is_file() or single.is_symlink() else []


def load_record(model_dir: str | Path) -> ModelRecord:
    """Read a model folder and whatever its run left around it; refuse what is not a model folder."""
    model_dir = Path(model_dir)
    config = _json(model_dir / "config.json") if model_dir.is_dir() else None
    files = weight_files(model_dir) if model_dir.is_dir() else []
    if config is None or not files or not all(f.is_file() for f in files):
        raise UserError(f"{model_dir}: not a model folder (expected config.json and model.safetensors, "
                        "as babyllama writes under <out_dir>/models/<name>/)")
    if not isinstance(config, dict):
        raise UserError(f"{model_dir / 'config.json'}: expected a JSON object (a Hugging Face config)")
    from babyllama.evaluate.formats import check_model_files

    check_model_files(model_dir, causal=False)  # config, checkpoint.json sums, safetensors headers, tokenizer
    rec = ModelRecord(name=model_dir.resolve().name, model_dir=model_dir, hf_config=config, weight_files=files,
                      training=_json(model_dir / "training_summary.json"))
    run_dir = model_dir.resolve().parent.parent
    if model_dir.resolve().parent.name == "models" and (run_dir / "config.yaml").is_file():
        rec.run_dir = run_dir
        rec.run_config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        rec.manifest = _json(run_dir / "data" / "manifest.json")
        rec.ledger = _json(run_dir / "ledger.json")
        rec.environment = (_json(run_dir / "summary.json") or {}).get("environment")
        _read_results(rec, run_dir)
    return rec


def _read_results(rec: ModelRecord, run_dir: Path) -> None:
    """The model's role, results and headlines, through the same functions the report and the sweep use."""
    try:
        cfg = load_config(run_dir / "config.yaml", [f"out_dir={run_dir}"])
    except UserError as e:
        rec.config_problem = str(e)
        return
    rec.protocol = cfg.eval.protocol
    rec.run_role = next((m.role for m in members(cfg) if m.name == rec.name), None)
    rec.results, rec.headlines = model_results(cfg, rec.name), model_headlines(cfg, rec.name)
    rec.columns, rec.measures = headline_columns(cfg), headline_measures(cfg)
