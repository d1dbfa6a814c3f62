"""One command per out_dir: a second `run` refuses in one line naming the holder; a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from babyllama.cli import main
from babyllama.lock import LOCK_FILE, out_dir_lock
from conftest import tiny_config_dict
from helpers import read_metrics


def _config(tmp_path: Path, corpus: Path) -> Path:
    d = tiny_config_dict(tmp_path / "run", corpus)
    d["teachers"] = d["teachers"][:1]  # one teacher, a student, no control: the smallest whole run
    d["control"] = False
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_a_held_out_dir_refuses_a_second_command_and_a_dead_holder_is_taken_over(tmp_path, text_corpus, capsys):
    cfg = _config(tmp_path, text_corpus)
    out = tmp_path / "run"
    with out_dir_lock(out, "babyllama run (the test)"):
        assert main(["prepare", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {os.getpid()}" in err and "is in use by another babyllama command" in err
        assert not (out / "data").exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename, "command": "x",
                                             "since": time.time()}))
    assert main(["prepare", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert f"pid {int(dead.stdout)}" in printed and "no longer running" in printed
    assert (out / "data" / "manifest.json").is_file()
    assert (out / LOCK_FILE).read_text() == ""  # a clean exit leaves no holder behind


def test_two_real_runs_on_one_out_dir_one_refuses_the_other_finishes_right(tmp_path, text_corpus):
    cfg = _config(tmp_path, text_corpus)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "babyllama", "run", str(cfg)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / LOCK_FILE
    deadline = time.monotonic() + 120
    while not (lock.is_file() and str(first.pid) in lock.read_text()):  # the first run holds the lock
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    out_first, err_first = first.communicate(timeout=600)
    assert first.returncode == 0, err_first[-3000:]
    assert second.returncode == 2
    errors = [line for line in second.stderr.splitlines() if line.startswith("babyllama: error: ")]
    assert len(errors) == 1 and f"in use by another babyllama command (pid {first.pid}" in errors[0]
    assert "Traceback" not in second.stderr

    # the first run's metrics are those of one uninterrupted run: every step once, the right token count
    for name in ("t-llama", "student"):
        steps = [r["step"] for r in read_metrics(out / "models" / name) if "loss" in r]
        assert steps == list(range(1, 7)), (name, steps)
        summary = json.loads((out / "models" / name / "training_summary.json").read_text())
        assert summary["tokens_seen"] == 6 * 4 * 16
    assert "tokens" in (out / "report.md").read_text()
