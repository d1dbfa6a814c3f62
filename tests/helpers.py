"""Helpers shared by the training tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from babyllama.config import Config


def variant(cfg: Config, out_dir: Path, **train) -> Config:
    """The same experiment and prepared data under another out_dir, with train keys changed for every model."""
    d = cfg.model_dump(mode="json")
    d["out_dir"] = str(out_dir)
    for m in [*d["teachers"], d["student"]]:
        m["train"].update(train)
    new = Config.model_validate(d)
    if not new.data_dir.exists():
        shutil.copytree(cfg.data_dir, new.data_dir)
    return new


def read_metrics(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
