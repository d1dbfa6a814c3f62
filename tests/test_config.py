"""The config schema, overrides and one-line errors, through the public entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from babyllama.cli import main
from babyllama.config import Config, config_docs, load_config
from babyllama.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_validate(preset: Path) -> None:
    cfg = load_config(preset)
    assert cfg.student is not None and len(cfg.teachers) >= 2
    assert cfg.data.seq_len <= min(m.max_position_embeddings for m in cfg.models())


def test_overrides_by_index_and_by_name() -> None:
    cfg = load_config(
        ROOT / "configs/babylm-2023-strict-small.yaml",
        ["out_dir=runs/x", "teachers.0.train.lr=1e-3", "teachers.llama-360m.num_layers=2", "distill.cache.enabled=false"],
    )
    assert cfg.out_dir == "runs/x"
    assert cfg.teachers[0].train.lr == 1e-3
    assert cfg.model("llama-360m").num_layers == 2
    assert cfg.distill.cache.enabled is False


def test_control_alias_and_unknown_model() -> None:
    cfg = load_config(ROOT / "configs/demo.yaml")
    assert cfg.model("control").name == cfg.control_name
    with pytest.raises(UserError, match="no model named"):
        cfg.model("nope")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("tokenizer.vocab_size=10", "tokenizer.vocab_size"),
        ("student.train.lr=abc", "student.train.lr"),
        ("data.bogus=1", "data.bogus: unknown key"),
        ("teachers.0.hidden_size=102", "not divisible by num_heads"),
        ("data.seq_len=4096", "max_position_embeddings"),
        ("distill.weights=[1.0]", "distill.weights"),
    ],
)
def test_bad_values_are_one_line_errors(override: str, expected: str, capsys) -> None:
    rc = main(["config", str(ROOT / "configs/demo.yaml"), "--set", override])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert expected in err and "demo.yaml" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_files(tmp_path: Path, capsys) -> None:
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    for path, expected in [
        (tmp_path / "missing.yaml", "not found"),
        (tmp_path, "is a folder"),
        (tmp_path / "list.yaml", "top level must be a mapping"),
        (tmp_path / "broken.yaml", "not valid YAML"),
    ]:
        assert main(["config", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1


def test_bad_override_syntax(capsys) -> None:
    assert main(["config", str(ROOT / "configs/demo.yaml"), "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["config", str(ROOT / "configs/demo.yaml"), "--set", "teachers.9.name=x"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs/demo.yaml", [f"out_dir={tmp_path}"])
    again = Config.model_validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_docs_cover_every_key() -> None:
    docs = config_docs()
    for key in ["out_dir", "data.corpus", "data.seq_len", "tokenizer.vocab_size", "teachers[].train.lr",
                "student.arch", "distill.cache.top_k", "eval.ties", "eval.seed", "eval.global_piqa", "eval.finetune_defaults.lr"]:
        assert f"`{key}`" in docs


def test_docs_file_is_current() -> None:
    """docs/config.md is generated from the schema; regenerate with `babyllama config --docs > docs/config.md`."""
    assert (ROOT / "docs/config.md").read_text() == config_docs()


def test_finetune_flags_are_validated_like_config_keys(capsys) -> None:
    assert main(["finetune", "--model", "m", "--data", "d", "--task", "cola", "--lr", "-1"]) == 2
    assert "--lr: Input should be greater than 0" in capsys.readouterr().err


def test_finetune_tasks_checked_up_front_and_per_task_keys_merge() -> None:
    with pytest.raises(UserError, match="unknown fine-tuning task 'colaa'"):
        load_config(ROOT / "configs/demo.yaml", ["eval.finetune=[colaa]", "eval.finetune_data=/x"])
    with pytest.raises(UserError, match="finetune_data"):
        load_config(ROOT / "configs/demo.yaml", ["eval.finetune=[cola]"])
    cfg = load_config(ROOT / "configs/demo.yaml", ["eval.finetune=[cola, rte]", "eval.finetune_data=/x",
                                                   "eval.finetune_defaults.epochs=3", "eval.finetune_tasks.cola.lr=4e-5"])
    assert cfg.eval.finetune_hparams("cola").lr == 4e-5 and cfg.eval.finetune_hparams("cola").epochs == 3
    assert cfg.eval.finetune_hparams("rte").lr == 5e-5
