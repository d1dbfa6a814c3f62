"""Nothing stale, nothing silently wrong: finished models and token files are checked against their sha256
records before a stage trusts them, and a damaged file is reported (and redone) before anything is deleted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from babyllama import io
from babyllama.cli import main
from conftest import tiny_config_dict


def _flip_byte(path: Path, keep_mtime: bool = False) -> None:
    """Change one byte in the middle of ``path`` (same size); optionally keep its modification time, and
    forget this process's memo of file hashes, as a new process would."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        io.forget_file_hashes()


def _finished_run(tmp_path: Path, corpus: Path, capsys) -> tuple[str, Path]:
    d = tiny_config_dict(tmp_path / "run", corpus)
    d["teachers"] = d["teachers"][:1]
    d["control"] = False
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(d))
    assert main(["run", str(cfg)]) == 0
    capsys.readouterr()
    return str(cfg), tmp_path / "run"


def test_damaged_teacher_is_reported_and_restored_before_anything_is_deleted(tmp_path, text_corpus, capsys):
    cfg, out = _finished_run(tmp_path, text_corpus, capsys)
    teacher, student = out / "models" / "t-llama", out / "models" / "student"
    student_stamp = (student / "model.safetensors").stat().st_mtime_ns
    _flip_byte(teacher / "model.safetensors")

    # distill on its own refuses the damaged teacher, in one line, and touches nothing
    assert main(["distill", cfg]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors does not match its checkpoint.json" in err
    assert (student / "model.safetensors").stat().st_mtime_ns == student_stamp

    # run reports it, redoes the teacher stage (a copy from its intact checkpoint), keeps the student
    assert main(["run", cfg]) == 0
    printed = capsys.readouterr().out
    assert f"{teacher / 'model.safetensors'} does not match its checkpoint.json record (damaged): " \
           "stage teacher:t-llama will redo it" in printed
    assert "[run] distill: up to date, skipped" in printed
    assert (student / "model.safetensors").stat().st_mtime_ns == student_stamp
    from babyllama.train.checkpoint import damaged_file

    assert damaged_file(teacher) is None


def test_token_file_changed_at_same_size_and_mtime_is_detected_then_rebuilt(tmp_path, text_corpus, capsys):
    d = tiny_config_dict(tmp_path / "run", text_corpus)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(d))
    assert main(["prepare", str(cfg)]) == 0
    data = tmp_path / "run" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    _flip_byte(data / "train.bin", keep_mtime=True)
    capsys.readouterr()

    assert main(["train", str(cfg), "--model", "t-llama"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.bin: its sha256 does not match the manifest" in err
    assert not (tmp_path / "run" / "checkpoints" / "t-llama").exists()

    assert main(["prepare", str(cfg)]) == 0  # not "up to date": the token file is rebuilt, identically
    assert "up to date" not in capsys.readouterr().out
    assert json.loads((data / "manifest.json").read_text())["data_hash"] == manifest["data_hash"]


def test_corpus_edited_at_same_size_and_mtime_is_prepared_again(tmp_path, text_corpus, capsys):
    d = tiny_config_dict(tmp_path / "run", text_corpus)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(d))
    assert main(["prepare", str(cfg)]) == 0
    part = text_corpus / "part0.txt"
    st = part.stat()
    part.write_text(part.read_text().replace("cat", "cow", 1))
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns))
    io.forget_file_hashes()
    capsys.readouterr()
    assert main(["prepare", str(cfg)]) == 0
    assert "up to date" not in capsys.readouterr().out
    os.utime(part)  # a touch alone changes nothing
    assert main(["prepare", str(cfg)]) == 0
    assert "up to date" in capsys.readouterr().out
