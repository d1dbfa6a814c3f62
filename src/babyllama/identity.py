"""What a result is made from, in one place: the identities that decide "is this done?".

* **data**: the prepared data's content hash (tokenizer + token files), read from <data_dir>/manifest.json;
* **training**: every setting that changes a model's weights (:func:`training_components`; hashed, the
  config hash the loop stores in every checkpoint and in training_summary.json) together with the data;
* **evaluation**: the evaluated models' training identities with the evaluation settings; every result
  file records the sha256 sums of the files it was computed from (evaluate/provenance.py), so an
  interrupted evaluation redoes only what is missing, and a stale or damaged result is redone.

The training loop refuses to resume across a changed training identity, `babyllama run` skips a stage
whose identity is unchanged, and :func:`is_trained` says whether a finished model matches a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babyllama.config import Config, EvalConfig, ModelConfig
from babyllama.data.tokens import read_manifest
from babyllama.errors import UserError
from babyllama.io import read_json, stable_hash

#: Train keys that do not change the weights (how often we log or save, which kernel): editable on resume.
NON_OPTIMISING_KEYS = {"log_every", "save_every", "fused_loss"}  # fused_loss: same maths, other kernels
#: Train keys added after runs were made, with the value that reproduces those runs: left out of the
#: identity at that value, so a model trained before the key existed is still complete and resumable.
ADDED_KEYS = {"schedule": "cosine", "min_lr_ratio": 0.0, "decay_fraction": 0.2}

SUMMARY_FILE = "training_summary.json"  # written by the loop into models/<name>/
WEIGHTS_FILE = "model.safetensors"


# -- data ----------------------------------------------------------------------------------------------


def data_identity(data_dir: Path) -> str:
    """The prepared data's content hash (tokenizer + token files) from <data_dir>/manifest.json."""
    manifest = read_manifest(data_dir)
    if "data_hash" not in manifest:
        raise UserError(f"{data_dir / 'manifest.json'}: no data_hash; run `babyllama prepare` again")
    return str(manifest["data_hash"])


# -- training ------------------------------------------------------------------------------------------


def training_components(cfg: Config, model_cfg: ModelConfig, objective: dict, windows: str | None = None) -> dict:
    """Everything that determines the trained weights, as a flat {dotted key: value} dict.

    ``objective`` is the objective's fingerprint; ``windows`` overrides train.windows (the cache needs
    'fixed'). Hashing the dict gives the config hash; comparing two key by key names what changed
    (:func:`describe_changes`). The data is a separate identity, and so is the world size (checked on
    resume only), so a model trained under torchrun is still complete for a single-process pipeline.
    """
    arch = model_cfg.model_dump(mode="json", exclude={"name", "train"})
    train = model_cfg.train.model_dump(mode="json", exclude=NON_OPTIMISING_KEYS | {"seed"})
    train["windows"] = windows or model_cfg.train.windows
    for key, before in ADDED_KEYS.items():
        if train.get(key) == before:
            del train[key]
    tree = {"model": arch, "train": train, "seed": model_seed(cfg, model_cfg), "data.seq_len": cfg.data.seq_len,
            "objective": objective}
    return _flatten(tree)


def model_seed(cfg: Config, model_cfg: ModelConfig) -> int:
    """The seed a model trains with: its own train.seed, else the experiment's (hashed as one value, so
    setting train.seed to the experiment's seed changes nothing)."""
    return cfg.seed if model_cfg.train.seed is None else model_cfg.train.seed


def config_hash(components: dict) -> str:
    return stable_hash(components)


def training_identity(cfg: Config, model_cfg: ModelConfig, objective: dict, windows: str | None = None) -> str:
    """A training stage's identity: its data and its components (not logging cadence, not the world size)."""
    return stable_hash({"data": data_identity(cfg.data_dir),
                        "run": training_components(cfg, model_cfg, objective, windows)})


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def describe_changes(old: dict, new: dict, limit: int = 3) -> str:
    """'train.lr: 0.001 -> 0.002, ...' for the keys that differ (at most ``limit`` shown)."""
    keys = sorted(set(old) | set(new), key=str)
    diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys if old.get(k) != new.get(k)]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def is_trained(cfg: Config, model_cfg: ModelConfig, objective: dict, *, windows: str | None = None) -> bool:
    """True when models/<name>/ holds a finished model trained with exactly this config and data."""
    summary_path = cfg.model_dir(model_cfg.name) / SUMMARY_FILE
    if not summary_path.exists() or not (summary_path.parent / WEIGHTS_FILE).exists():
        return False
    try:
        summary = read_json(summary_path)
        data = data_identity(cfg.data_dir)
    except (UserError, ValueError, OSError):
        return False
    wanted = config_hash(training_components(cfg, model_cfg, objective, windows))
    return summary.get("config_hash") == wanted and summary.get("data_hash") == data


# -- evaluation ----------------------------------------------------------------------------------------


def evaluation_identity(models: dict[str, str], eval_cfg: EvalConfig) -> str:
    """The evaluation stage's identity: every evaluated model's training identity and the eval settings."""
    return stable_hash({"models": models, "eval": eval_cfg.model_dump(mode="json")})
