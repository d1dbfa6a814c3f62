"""Shared fixtures: a tiny generated English-like corpus and a tiny experiment config.

Everything is seeded and small so the whole suite runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import random
import resource
import signal
import sys
from pathlib import Path

import pytest
import torch

from babyllama.config import Config

SUBJECTS = ["the cat", "the dog", "a child", "the teacher", "my mother", "the birds", "we", "they", "she", "he"]
VERBS = ["sees", "likes", "finds", "wants", "helps", "follows", "hears", "calls"]
OBJECTS = ["the ball", "a red apple", "the little house", "her friend", "the garden", "a song", "the old man"]
ENDINGS = [".", ".", ".", "!", "?"]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        if rng.random() < 0.3:
            s += f" and {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        lines.append(s[0].upper() + s[1:] + rng.choice(ENDINGS))
    return lines


def write_text_corpus(folder: Path, n_lines: int = 600, n_files: int = 2, seed: int = 0) -> Path:
    """A plain folder of .txt files, one sentence per line."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = make_sentences(n_lines, seed)
    per = len(lines) // n_files
    for i in range(n_files):
        (folder / f"part{i}.txt").write_text("\n".join(lines[i * per : (i + 1) * per]) + "\n", encoding="utf-8")
    return folder


def tiny_config_dict(out_dir: Path, corpus: Path) -> dict:
    small = {"lr": 3e-3, "batch_size": 4, "epochs": 1, "max_steps": 6, "warmup_steps": 1, "eval_windows": 8,
             "log_every": 1}
    return {
        "out_dir": str(out_dir),
        "seed": 7,
        "data": {"corpus": str(corpus), "format": "text", "dev": "split", "dev_fraction": 0.1, "seq_len": 16},
        "tokenizer": {"vocab_size": 300, "min_frequency": 2},
        "teachers": [
            {"name": "t-llama", "arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 32, "train": dict(small)},
            {"name": "t-gpt2", "arch": "gpt2", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
             "max_position_embeddings": 32, "train": dict(small)},
        ],
        "student": {"name": "student", "arch": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                    "intermediate_size": 32, "max_position_embeddings": 32, "train": dict(small)},
        "distill": {"alpha": 0.5, "temperature": 2.0, "cache": {"enabled": False, "top_k": 8}},
        "logging": {"progress": False},
    }


# Tiny models spend their time in per-op overhead, where extra threads only add contention.
torch.set_num_threads(1)

#: The longest modules (pytest --durations, 2026-12-07), longest first. `make test` hands whole modules to
#: its two workers in collection order (xdist --dist loadscope --no-loadscope-reorder): longest first, the
#: short ones fill in at the end and both workers finish together, instead of one running test_sweep.py
#: alone at the end. A module missing here only runs later; keep the list to the dozen longest.
LONGEST_FIRST = ("test_sweep.py", "test_pipeline.py", "test_threads.py", "test_faults_read.py", "test_headlines.py",
                 "test_train_resume.py", "test_distill_cache.py", "test_lock.py", "test_train_ddp.py",
                 "test_distill_cache_draws.py", "test_report.py", "test_teachers_external.py", "test_export.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's own order is kept


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture
def file_size_limit(monkeypatch):
    """Set RLIMIT_FSIZE for this process and the processes it starts (writes past it fail with EFBIG, a real OS
    refusal like a full disk; SIGXFSZ is ignored, so the write fails instead of killing the writer).
    No bytecode is written meanwhile, here or in a child (PYTHONDONTWRITEBYTECODE): Python does not check a .pyc
    write, so a module first imported under the limit would leave a truncated .pyc in the shared venv
    (`marshal data too short` in every later process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    no_bytecode_before = sys.dont_write_bytecode

    def limit(n: int | None) -> None:
        sys.dont_write_bytecode = no_bytecode_before if n is None else True
        if n is None:
            monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        else:
            monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft if n is None else n, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    sys.dont_write_bytecode = no_bytecode_before
    signal.signal(signal.SIGXFSZ, old_handler)


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    return write_text_corpus(tmp_path / "corpus")


@pytest.fixture
def tiny_cfg(tmp_path: Path, text_corpus: Path) -> Config:
    return Config.model_validate(tiny_config_dict(tmp_path / "run", text_corpus))


@pytest.fixture
def prepared_cfg(tiny_cfg: Config) -> Config:
    """The tiny config with its data stage already run."""
    from babyllama.data.prepare import prepare

    prepare(tiny_cfg)
    return tiny_cfg


def write_verified_result(cfg: Config, model: str, file: str, value: dict) -> Path:
    """A result file as `run` writes it: with the sums of the model's files and the data it scored now."""
    from babyllama.evaluate.registry import current_inputs, jobs, result_path, write_result

    job = next(j for _, j in jobs(cfg) if j.file == file)
    write_result(cfg, model, job, current_inputs(cfg, model, job), value)
    return result_path(cfg, model, job)
