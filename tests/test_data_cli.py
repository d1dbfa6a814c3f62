"""`babyllama prepare CONFIG` through the CLI: success, and every bad input as one line + exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from babyllama.cli import main
from test_data_corpora import make_babylm_2023


def write_config(tmp_path: Path, **data) -> Path:
    cfg = {"out_dir": str(tmp_path / "run"), "data": {"seq_len": 16, **data},
           "tokenizer": {"vocab_size": 300}, "logging": {"progress": False}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_prepare_succeeds_and_rerun_is_a_no_op(tmp_path, text_corpus, capsys):
    cfg = write_config(tmp_path, corpus=str(text_corpus))
    assert main(["prepare", str(cfg)]) == 0
    assert "word budget" in capsys.readouterr().out
    assert main(["prepare", str(cfg), "--set", "data.seq_len=8"]) == 0
    assert "up to date" in capsys.readouterr().out


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    empty = tmp_path / "empty_txt"
    empty.mkdir()
    (empty / "a.txt").write_text("\n   \n")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "data.csv").write_text("a,b\n")
    no_dev = make_babylm_2023(tmp_path / "nodev", dev=False)
    with_dev = make_babylm_2023(tmp_path / "withdev")
    one_line = tmp_path / "one.txt"
    one_line.write_text("just one line here\n")
    return {
        "missing path": ({"corpus": str(tmp_path / "nope")}, "path not found"),
        "empty corpus": ({"corpus": str(empty)}, "empty corpus"),
        "no recognised files": ({"corpus": str(odd)}, "no recognised files"),
        "missing sibling dev": ({"corpus": str(no_dev), "dev": "sibling"}, "babylm_dev"),
        "file where a folder is expected": ({"corpus": str(with_dev / "qed.train"), "format": "babylm-2023"}, "expects a folder"),
        "dev path missing": ({"corpus": str(with_dev), "dev": str(tmp_path / "gone")}, "data.dev"),
        "too small to split": ({"corpus": str(one_line)}, "too small to hold out"),
        "max_words keeps nothing": ({"corpus": str(with_dev), "max_words": 1}, "keeps no line"),
        "unknown embedded corpus": ({"corpus": "embedded:nothing"}, "unknown embedded corpus"),
        "vocab too small": ({"corpus": str(with_dev), "_vocab": 100}, "at least 259"),
    }


CASES = ["missing path", "empty corpus", "no recognised files", "missing sibling dev", "file where a folder is expected",
         "dev path missing", "too small to split", "max_words keeps nothing", "unknown embedded corpus", "vocab too small"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_no_data(tmp_path, capsys, case):
    data, message = _bad_inputs(tmp_path)[case]
    data = dict(data)
    vocab = data.pop("_vocab", None)
    cfg = write_config(tmp_path, **data)
    argv = ["prepare", str(cfg)] + (["--set", f"tokenizer.vocab_size={vocab}"] if vocab else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("babyllama: error: ") and message in err, err
    assert not (tmp_path / "run" / "data").exists()
