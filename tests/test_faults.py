"""The fault catalogue: what a new user gets wrong, and what the OS refuses, each as one line and an exit code.

Every case runs the real CLI in-process (`main([...])`) and checks the exit status, that stderr is one
line naming the problem, and that no traceback (nor torch's advice to turn weights_only off) is printed.
Cases that need a trained model or a resource limit have their own tests below the table.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from babyllama.cli import main
from babyllama.io import file_sha256
from conftest import tiny_config_dict
from fixtures.eval.tiny_models import make_model_dir

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "m", "llama")


def _config(tmp_path: Path, corpus: Path, edit: Callable[[dict], None] | None = None, text: str | None = None) -> str:
    d = tiny_config_dict(tmp_path / "run", corpus)
    if edit:
        edit(d)
    path = tmp_path / "cfg.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(d))
    return str(path)


def _copy_model(src: Path, dest: Path, damage: Callable[[Path], None]) -> str:
    dest.mkdir()
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    damage(dest / "model.safetensors")
    return str(dest)


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble_header(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[8:40] = b"\xff" * 32
    f.write_bytes(bytes(data))


def _nested_blimp(tmp_path: Path) -> str:
    folder = tmp_path / "blimp"
    folder.mkdir()
    (folder / "adjunct_island.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    return str(folder)


def _raw(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _file(path: Path) -> Path:
    path.write_text("not a folder\n")
    return path


# case -> (argv builder(tmp_path, corpus, model_dir), exit status, message fragment)
CASES: dict[str, tuple[Callable[[Path, Path, Path], list[str]], int, str]] = {
    "config not UTF-8": (lambda t, c, m: ["config", _raw(t / "latin1.yaml", b'seed: 1\nout_dir: "r\xe9sum\xe9"\n')], 2,
                         "not UTF-8"),
    "duplicate YAML key": (lambda t, c, m: ["config", _config(t, c, text="seed: 1\nseed: 2\n")], 2, "duplicate key 'seed'"),
    "seed: true": (lambda t, c, m: ["config", _config(t, c, lambda d: d.update(seed=True))], 2, "got True"),
    "lr: .inf": (lambda t, c, m: ["config", _config(t, c), "--set", "teachers.0.train.lr=.inf"], 2, "finite number"),
    "lr: .nan": (lambda t, c, m: ["config", _config(t, c), "--set", "distill.temperature=.nan"], 2, "finite number"),
    "vocab_size 2^32": (lambda t, c, m: ["config", _config(t, c), "--set", "tokenizer.vocab_size=4294967296"], 2,
                        "tokenizer.vocab_size"),
    "empty out_dir": (lambda t, c, m: ["config", _config(t, c, lambda d: d.update(out_dir=""))], 2, "out_dir"),
    "blank out_dir": (lambda t, c, m: ["config", _config(t, c, lambda d: d.update(out_dir="  "))], 2, "out_dir"),
    "out_dir is a file": (lambda t, c, m: ["prepare", _config(t, c, lambda d: d.update(out_dir=str(_file(t / "f"))))], 2,
                          "is a file, expected a folder"),
    "out_dir's parent is a file": (lambda t, c, m: ["prepare", _config(t, c, lambda d: d.update(
        out_dir=str(_file(t / "f") / "run")))], 2, "is a file, not a folder"),
    "--out is a folder": (lambda t, c, m: ["evaluate", "blimp", "--model", str(m), "--data", str(FIX / "blimp_2024"),
                                           "--out", str(t)], 2, "is a folder, expected a file"),
    "--out under a file": (lambda t, c, m: ["evaluate", "blimp", "--model", str(m), "--data", str(FIX / "blimp_2024"),
                                            "--out", str(_file(t / "f") / "r.json")], 2, "is a file, not a folder"),
    "BLiMP line of deeply nested JSON": (lambda t, c, m: ["evaluate", "blimp", "--model", str(m), "--data", _nested_blimp(t)],
                                         2, "nested too deeply"),
    "truncated safetensors": (lambda t, c, m: ["evaluate", "blimp", "--model", _copy_model(m, t / "cut", _truncate),
                                               "--data", str(FIX / "blimp_2024")], 2, "cannot load"),
    "corrupted safetensors header": (lambda t, c, m: ["evaluate", "blimp", "--model", _copy_model(m, t / "bad", _garble_header),
                                                      "--data", str(FIX / "blimp_2024")], 2, "cannot load"),
    "finetune: train file missing": (lambda t, c, m: ["finetune", "--model", str(m), "--data", str(FIX / "glue_2023"),
                                                      "--task", "rte"], 2, "no train file for rte"),
    "finetune: --out is a file": (lambda t, c, m: ["finetune", "--model", str(m), "--data", str(FIX / "glue_2024"),
                                                   "--task", "sst2", "--out", str(_file(t / "f"))], 2, "is a file"),
    "report of a missing folder": (lambda t, c, m: ["report", str(t / "nothing")], 2, "no such folder"),
    # inputs are checked before any work (names, paths, data sets, items)
    "newline in a model name": (lambda t, c, m: ["config", _config(t, c, lambda d: d["student"].update(
        name="stu\ndent"))], 2, "control character '\\n'"),
    "NUL in out_dir": (lambda t, c, m: ["prepare", _config(t, c, lambda d: d.update(out_dir=str(t / "r\0un")))], 2,
                       "control character '\\x00'"),
    "NUL in a command-line path": (lambda t, c, m: ["report", str(t / "r\0un")], 2, "control character"),
    "corpus that is not text": (lambda t, c, m: ["prepare", _config(t, c, lambda d: d["data"].update(
        corpus=_raw(t / "ls", bytes(range(256)) * 64 + b"\0" * 4096)))], 2, "does not look like text"),
    "empty EWoK target": (lambda t, c, m: ["evaluate", "ewok", "--model", str(m), "--data", _jsonl(t / "ewok.jsonl", {
        "Domain": "d", "Context1": "The ball is here.", "Target1": "", "Target2": "It is there."})], 2,
        "field 'Target1' is empty"),
    "empty entity-tracking option": (lambda t, c, m: ["evaluate", "entity-tracking", "--model", str(m), "--data",
                                                      _jsonl(t / "regular.jsonl", {"input_prefix": "Box 0 contains",
                                                             "options": [" the cat.", ""], "numops": 0})], 2,
                                     "options[1] is empty"),
    "lone surrogate in a BLiMP sentence": (lambda t, c, m: ["evaluate", "blimp", "--model", str(m), "--data", _raw(
        t / "adjunct_island.jsonl", b'{"sentence_good": "Who \\ud800 left?", "sentence_bad": "Who left it?"}\n')],
        2, "lone surrogate (U+D800)"),
}


def _jsonl(path: Path, *rows: dict) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def assert_one_line(err: str, fragment: str) -> None:
    assert err.count("\n") == 1 and err.startswith("babyllama: error: "), err
    assert fragment in err, err
    assert "Traceback" not in err and "weights_only" not in err, err


@pytest.mark.parametrize("case", list(CASES))
def test_catalogue_case_is_one_line_with_its_exit_status(case, tmp_path, text_corpus, model_dir, capsys):
    build, status, fragment = CASES[case]
    argv = build(tmp_path, text_corpus, model_dir)
    assert main(argv) == status
    assert_one_line(capsys.readouterr().err, fragment)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_dir(tmp_path, text_corpus, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["prepare", _config(tmp_path, text_corpus, lambda d: d.update(out_dir=str(ro / "run")))]) == 2
    finally:
        ro.chmod(0o755)
    assert_one_line(capsys.readouterr().err, "permission denied")


# -- cases that need a trained model or a resource limit --------------------------------------------------


def _train_argv(tmp_path: Path, corpus: Path, **train) -> list[str]:
    def edit(d: dict) -> None:
        d["teachers"][0]["train"].update(train)

    return ["train", _config(tmp_path, corpus, edit), "--model", "t-llama"]


def test_write_refused_mid_checkpoint_is_one_line_exit_3_and_resumable(tmp_path, text_corpus, file_size_limit, capsys):
    argv = _train_argv(tmp_path, text_corpus, max_steps=2, eval_every=1)
    assert main(["prepare", argv[1]]) == 0
    capsys.readouterr()
    file_size_limit(30_000)  # the config and metrics fit; the model's 118 kB of weights do not
    assert main(argv) == 3
    assert_one_line(capsys.readouterr().err, "file too large")
    run = tmp_path / "run"
    assert not list(run.rglob("*.tmp")) and not (run / "models" / "t-llama").exists()
    file_size_limit(None)
    assert main(argv) == 0
    assert (run / "models" / "t-llama" / "model.safetensors").is_file()


def test_non_finite_loss_stops_keeping_the_last_good_checkpoint(tmp_path, text_corpus, capsys):
    # lr ramps from 0: steps 1-2 are finite and saved, then the weights blow up
    argv = _train_argv(tmp_path, text_corpus, lr=1e30, warmup_steps=2, save_every=1, log_every=1)
    assert main(["prepare", argv[1]]) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert_one_line(capsys.readouterr().err, "the loss became NaN or infinite")
    last = tmp_path / "run" / "checkpoints" / "t-llama" / "last"
    assert json.loads((last / "checkpoint.json").read_text())["step"] == 2
    assert not (tmp_path / "run" / "models" / "t-llama").exists()


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_malicious_pickle_in_a_checkpoint_is_refused_in_one_line(tmp_path, text_corpus, capsys):
    argv = _train_argv(tmp_path, text_corpus, max_steps=1)
    assert main(["prepare", argv[1]]) == 0
    assert main(argv) == 0
    last = tmp_path / "run" / "checkpoints" / "t-llama" / "last"
    (last / "training_state.pt").write_bytes(pickle.dumps({"step": _Boom()}))
    record = json.loads((last / "checkpoint.json").read_text())  # the attacker also fixes the checksum
    record["files"]["training_state.pt"] = file_sha256(last / "training_state.pt")
    (last / "checkpoint.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, "refused")
    assert "pwned" not in captured.out


def test_leftover_temporaries_in_data_and_cache_are_removed(tmp_path, text_corpus, capsys):
    cfg = _config(tmp_path, text_corpus)
    assert main(["prepare", cfg]) == 0
    left = [tmp_path / "run" / "data" / ".train.bin.k1ll3d.tmp", tmp_path / "run" / "cache" / "abc" / ".shard-00000.ids.npy.x.tmp"]
    for d in left:
        d.mkdir(parents=True)
        (d / "half").write_bytes(b"\0" * 100)
    assert main(["prepare", cfg]) == 0
    assert "removed 2 temporary folder" in capsys.readouterr().out
    assert not any(d.exists() for d in left)


def test_over_long_lines_are_cut_warned_and_counted(tmp_path, text_corpus, capsys):
    from babyllama.data.prepare import MAX_LINE_CHARS, split_long_line

    assert split_long_line("ab cd ef", 5) == ["ab cd", "ef"] and split_long_line("abcdefg", 3) == ["abc", "def", "g"]
    blob = "x" * (6 * MAX_LINE_CHARS)  # no whitespace: the case that stalled tokenizer training
    prose = " ".join(["the cat sees the dog."] * (MAX_LINE_CHARS // 10))
    (text_corpus / "part0.txt").write_text((text_corpus / "part0.txt").read_text() + blob + "\n" + prose + "\n")
    cfg = _config(tmp_path, text_corpus)
    assert main(["prepare", cfg]) == 0
    out = capsys.readouterr().out
    assert "2 line(s) longer than" in out
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["ledger"]["long_lines_split"] == 2


def test_teacher_without_tokenizer_json_is_refused_unless_allowed(tmp_path, text_corpus, capsys):
    from babyllama.config import load_config
    from babyllama.data.tokens import read_manifest
    from babyllama.distill.teachers import check_shared_tokenizer
    from babyllama.models import build_model

    path = _config(tmp_path, text_corpus)
    assert main(["prepare", path]) == 0
    cfg = load_config(path)
    manifest = read_manifest(cfg.data_dir)
    for t in cfg.teachers:  # same vocabulary size and special ids, but nothing to compare the tokens with
        build_model(t, manifest["vocab_size"], manifest["special_tokens"]).save_pretrained(cfg.model_dir(t.name))
    capsys.readouterr()
    assert main(["distill", path]) == 2
    assert_one_line(capsys.readouterr().err, "has no tokenizer.json to compare")
    allowed = load_config(path, ["distill.allow_unchecked_tokenizer=true"])
    check_shared_tokenizer(allowed, manifest, [allowed.model_dir(t.name) for t in allowed.teachers])


# -- inputs checked before work, resources, files read back ------------------------------------------------


def test_a_typo_in_eval_data_stops_run_before_any_training(tmp_path, text_corpus, capsys):
    cfg = _config(tmp_path, text_corpus, lambda d: d.update(eval={"blimp": str(FIX / "blimp_orignal")}))
    assert main(["run", cfg]) == 2
    assert_one_line(capsys.readouterr().err, "eval.blimp: ")
    assert not (tmp_path / "run" / "models").exists() and not (tmp_path / "run" / "data").exists()


def test_tilde_is_expanded_in_every_path(tmp_path, text_corpus, monkeypatch, capsys):
    from babyllama.config import load_config

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(text_corpus, home / "corpus")
    cfg = _config(tmp_path, text_corpus, lambda d: (d.update(out_dir="~/x"), d["data"].update(corpus="~/corpus"),
                                                    d.update(eval={"blimp": "~/blimp"})))
    shutil.copytree(FIX / "blimp_original", home / "blimp")
    loaded = load_config(cfg)
    assert loaded.out == home / "x" and loaded.eval.blimp == str(home / "blimp")
    assert main(["prepare", cfg]) == 0
    assert (home / "x" / "data" / "manifest.json").is_file() and not (tmp_path / "~").exists()
    capsys.readouterr()
    assert main(["report", "~/nothing"]) == 2  # command-line paths too
    assert_one_line(capsys.readouterr().err, f"{home / 'nothing'}: not an experiment folder")


@pytest.mark.parametrize("error", ["cpu", "cuda"])
def test_torch_out_of_memory_is_one_line_exit_3(error, tmp_path, model_dir, monkeypatch, capsys):
    import torch

    from babyllama.evaluate import registry

    def oom(*args, **kwargs):
        if error == "cpu":
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(registry, "score_blimp", oom)
    assert main(["evaluate", "blimp", "--model", str(model_dir), "--data", str(FIX / "blimp_2024")]) == 3
    assert_one_line(capsys.readouterr().err, "out of memory")


def test_other_runtime_errors_keep_their_traceback(model_dir, monkeypatch):
    from babyllama.evaluate import registry

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch: a bug, not the user's")

    monkeypatch.setattr(registry, "score_blimp", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["evaluate", "blimp", "--model", str(model_dir), "--data", str(FIX / "blimp_2024")])


@pytest.mark.parametrize("field", ["vocab_size", "splits.dev.tokens", "special_tokens"])
def test_a_data_manifest_missing_a_field_is_one_line_and_prepare_repairs_it(field, tmp_path, text_corpus, capsys):
    from babyllama.data.tokens import read_manifest

    cfg = _config(tmp_path, text_corpus)
    assert main(["prepare", cfg]) == 0
    path = tmp_path / "run" / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    *parents, last = field.split(".")
    node = manifest
    for p in parents:
        node = node[p]
    del node[last]
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["train", cfg, "--model", "t-llama"]) == 2
    assert_one_line(capsys.readouterr().err, "incomplete manifest")
    assert main(["prepare", cfg]) == 0
    read_manifest(tmp_path / "run" / "data")  # whole again
