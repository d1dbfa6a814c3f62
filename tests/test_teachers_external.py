"""Existing models as teachers (`teachers[].from`), the student's tokenizer from a model (`tokenizer.from`),
and the refusals: a folder that is no model, `from` with size keys, a Hub id that is not cached, a
teacher whose tokenizer is not the student's under vocab_alignment 'exact'."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, Qwen2Config, Qwen2ForCausalLM

from babyllama.cli import main
from babyllama.config import Config
from babyllama.data.prepare import prepare
from babyllama.io import file_sha256
from babyllama.pipeline import plan
from babyllama.training import distill, train_model

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _save_foreign(model: torch.nn.Module, folder: Path, tokenizer_dir: Path | None) -> Path:
    """A model saved the way the Hub ships one: config.json + model.safetensors (+ a tokenizer)."""
    model.save_pretrained(str(folder))
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def _qwen2(vocab: int) -> Qwen2ForCausalLM:
    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))


def _neox(vocab: int) -> GPTNeoXForCausalLM:
    torch.manual_seed(2)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, max_position_embeddings=64))


def _with_external(cfg: Config, out: Path, teachers: list[dict]) -> Config:
    tree = cfg.model_dump(mode="json", by_alias=True)
    tree["out_dir"] = str(out)
    tree["teachers"] = teachers
    new = Config.model_validate(tree)
    if not new.data_dir.exists():
        shutil.copytree(cfg.data_dir, new.data_dir)
    return new


def _write(tmp_path: Path, tree: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def test_qwen2_and_gpt_neox_folders_are_teachers(prepared_cfg: Config, tmp_path: Path) -> None:
    cfg = prepared_cfg
    vocab = json.loads((cfg.data_dir / "manifest.json").read_text())["vocab_size"]
    tok = cfg.data_dir / "tokenizer"
    qwen = _save_foreign(_qwen2(vocab), tmp_path / "qwen", tok)
    neox = _save_foreign(_neox(vocab), tmp_path / "neox", tok)
    ext = _with_external(cfg, tmp_path / "ext", [{"name": "qwen", "from": str(qwen)}, {"name": "neox", "from": str(neox)}])
    assert [s.name for s in plan(ext)] == ["prepare", "distill", "control", "evaluate", "report"]  # never trained here
    tree = ext.model_dump(mode="json", by_alias=True)
    tree["control"] = False
    assert main(["run", str(_write(tmp_path, tree))]) == 0
    out = ext.model_dir("student")
    report = (ext.out / "report.md").read_text()
    assert "| qwen | external teacher |" in report and "not known (trained elsewhere)" in report
    ledger = json.loads((ext.out / "ledger.json").read_text())
    assert ledger["models"]["qwen"]["model_type"] == "qwen2" and ledger["models"]["neox"]["parameters"] > 0
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["objective"]["teachers"] == [["qwen", file_sha256(qwen / "model.safetensors")],
                                                ["neox", file_sha256(neox / "model.safetensors")]]
    assert summary["steps"] == 6 and all("kd" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                                          if "loss" in json.loads(line))
    with pytest.raises(Exception, match="never trained here"):
        train_model(ext, "qwen")


def test_teacher_loaded_with_from_gives_the_same_student_bit_for_bit(prepared_cfg: Config, tmp_path: Path) -> None:
    cfg = prepared_cfg
    for t in cfg.teachers:
        train_model(cfg, t.name)
    here = load_file(str(distill(cfg) / "model.safetensors"))
    ext = _with_external(cfg, tmp_path / "elsewhere", [{"name": t.name, "from": str(cfg.model_dir(t.name))}
                                                      for t in cfg.teachers])
    there = load_file(str(distill(ext) / "model.safetensors"))
    assert here.keys() == there.keys()
    assert all(torch.equal(here[k], there[k]) for k in here)


def test_bad_from_is_one_line_exit_2_and_nothing_written(tiny_cfg: Config, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    base = tiny_cfg.model_dump(mode="json", by_alias=True)
    cases = {
        "no config.json": {"name": "x", "from": str(not_a_model)},
        "remove hidden_size": {"name": "x", "from": str(not_a_model), "hidden_size": 32},
        "local Hugging Face cache": {"name": "x", "from": "acme/not-cached"},
    }
    for expected, teacher in cases.items():
        tree = {**base, "teachers": [teacher]}
        assert main(["run", str(_write(tmp_path, tree))]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        assert not Path(tiny_cfg.out_dir).exists()
    tree = {**base, "student": {**base["student"], "from": str(not_a_model)}}
    assert main(["run", str(_write(tmp_path, tree))]) == 2
    assert "for teachers only" in capsys.readouterr().err


def test_hub_id_is_taken_from_the_local_cache_only(prepared_cfg: Config, tmp_path: Path, monkeypatch) -> None:
    from babyllama.existing import model_folder

    vocab = json.loads((prepared_cfg.data_dir / "manifest.json").read_text())["vocab_size"]
    snapshot = tmp_path / "hub" / "models--acme--tiny-qwen" / "snapshots" / "0123abc"
    _save_foreign(_qwen2(vocab), snapshot, prepared_cfg.data_dir / "tokenizer")
    (tmp_path / "hub" / "models--acme--tiny-qwen" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny-qwen" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # offline or not, nothing is fetched
    assert model_folder("acme/tiny-qwen", "teachers.q.from") == snapshot
    ext = _with_external(prepared_cfg, tmp_path / "hubrun", [{"name": "q", "from": "acme/tiny-qwen"}])
    summary = json.loads((distill(ext) / "training_summary.json").read_text())
    assert summary["objective"]["teachers"] == [["q", file_sha256(snapshot / "model.safetensors")]]


def test_exact_alignment_refuses_another_tokenizer(prepared_cfg: Config, tmp_path: Path) -> None:
    other = tmp_path / "other-corpus"
    other.mkdir()
    (other / "a.txt").write_text("\n".join(f"entirely different words number {i} here" for i in range(300)) + "\n")
    tree = prepared_cfg.model_dump(mode="json", by_alias=True)
    tree |= {"out_dir": str(tmp_path / "other"), "data": {**tree["data"], "corpus": str(other)}}
    other_cfg = Config.model_validate(tree)
    prepare(other_cfg)
    vocab = json.loads((other_cfg.data_dir / "manifest.json").read_text())["vocab_size"]
    teacher = _save_foreign(_qwen2(vocab), tmp_path / "foreign", other_cfg.data_dir / "tokenizer")
    ext = _with_external(prepared_cfg, tmp_path / "ext", [{"name": "foreign", "from": str(teacher)}])
    with pytest.raises(Exception, match="tokenizer.json files differ.*vocab_alignment: span"):
        distill(ext)


def test_tokenizer_from_a_model_folder(prepared_cfg: Config, tmp_path: Path) -> None:
    cfg = prepared_cfg
    source = _save_foreign(_qwen2(300), tmp_path / "tok-source", cfg.data_dir / "tokenizer")
    tree = cfg.model_dump(mode="json", by_alias=True)
    tree |= {"out_dir": str(tmp_path / "tokfrom"), "tokenizer": {"from": str(source)}}
    new = Config.model_validate(tree)
    manifest = prepare(new)
    assert (new.data_dir / "tokenizer" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    ours = json.loads((cfg.data_dir / "manifest.json").read_text())
    assert manifest["token_sha256"] == ours["token_sha256"]  # the same ids: the same tokenizer, byte for byte
    assert manifest["special_tokens"] == ours["special_tokens"] and manifest["vocab_size"] == 300
    assert manifest["ledger"]["total_words"] == ours["ledger"]["total_words"]  # words, not tokens
    bigger = _save_foreign(_qwen2(320), tmp_path / "padded", cfg.data_dir / "tokenizer")  # embeddings padded past it
    tree["tokenizer"] = {"from": str(bigger)}
    tree["out_dir"] = str(tmp_path / "padded-run")
    assert prepare(Config.model_validate(tree))["vocab_size"] == 320
    with pytest.raises(Exception, match="remove vocab_size"):
        Config.model_validate({**tree, "tokenizer": {"from": str(source), "vocab_size": 400}})


def _foreign_with_tokenizer(cfg: Config, tmp_path: Path, vocab_size: int) -> Path:
    """A tiny Qwen2 teacher saved with a BPE of ``vocab_size`` tokens trained on the same corpus (another tokenizer)."""
    tree = cfg.model_dump(mode="json", by_alias=True)
    tree |= {"out_dir": str(tmp_path / f"v{vocab_size}"), "tokenizer": {"vocab_size": vocab_size, "min_frequency": 2}}
    other = Config.model_validate(tree)
    prepare(other)
    vocab = json.loads((other.data_dir / "manifest.json").read_text())["vocab_size"]
    return _save_foreign(_qwen2(vocab), tmp_path / f"foreign{vocab_size}", other.data_dir / "tokenizer")


def test_a_vocabulary_that_cannot_be_aligned_is_refused_before_anything_is_written(
        tiny_cfg: Config, tmp_path: Path, capsys) -> None:
    from tokenizers import Tokenizer, models

    smaller = _foreign_with_tokenizer(tiny_cfg, tmp_path, 280)  # the student trains a 300-token BPE
    word_level = _save_foreign(_qwen2(8), tmp_path / "word-level", None)
    Tokenizer(models.WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>")).save(
        str(word_level / "tokenizer.json"))
    foreign = _foreign_with_tokenizer(tiny_cfg, tmp_path, 290)
    capsys.readouterr()  # the fixtures' own output
    base = tiny_cfg.model_dump(mode="json", by_alias=True)

    def refused(tree: dict, expected: str, verb: tuple[str, ...] = ("run",)) -> None:
        assert main([verb[0], str(_write(tmp_path, tree)), *verb[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err and "vocab_alignment: span" in err, err
        assert not (Path(tree["out_dir"]) / "data").exists() and not (Path(tree["out_dir"]) / "models").exists()

    # decided by the config alone: nothing at all is written
    refused({**base, "teachers": [{"name": "w", "from": str(word_level)}]}, "a WordLevel tokenizer")
    assert not Path(tiny_cfg.out_dir).exists()
    refused({**base, "tokenizer": {"from": str(tmp_path / "v280" / "data" / "tokenizer")},
             "teachers": [{"name": "f", "from": str(foreign)}]},
            "do not share a tokenizer")
    assert not Path(tiny_cfg.out_dir).exists()
    # a BPE that the student's could be until it is trained: refused by `prepare` before it writes (and so
    # before any teacher trains: our own llama teacher stays untrained)
    refused({**base, "teachers": [*base["teachers"], {"name": "f", "from": str(smaller)}]}, "do not share a tokenizer")
    # a sweep point is checked like a config, before its plan is written
    sweep = {**base, "out_dir": str(tmp_path / "sweep"), "distill": {**base["distill"], "vocab_alignment": "span"},
             "teachers": [{"name": "w", "from": str(word_level)}], "sweep": {"grid": {"distill.vocab_alignment": ["exact"]}}}
    refused(sweep, "a WordLevel tokenizer", ("sweep", "--plan"))
    assert not (tmp_path / "sweep").exists()
    assert main(["sweep", str(_write(tmp_path, {**sweep, "sweep": {}})), "--plan"]) == 0  # span alone is fine


def test_a_sweep_point_swaps_an_existing_teacher_and_its_alignment(prepared_cfg: Config, tmp_path: Path) -> None:
    from babyllama.sweep import member_config, sweep_members, teacher_home

    vocab = json.loads((prepared_cfg.data_dir / "manifest.json").read_text())["vocab_size"]
    same = _save_foreign(_qwen2(vocab), tmp_path / "same", prepared_cfg.data_dir / "tokenizer")
    other = _foreign_with_tokenizer(prepared_cfg, tmp_path, 280)
    tree = prepared_cfg.model_dump(mode="json", by_alias=True)
    tree |= {"tokenizer": {"from": str(same)}, "teachers": [{"name": "t", "from": str(same)}],
             "sweep": {"grid": {"distill.vocab_alignment": ["span"], "teachers.0.from": [str(other)]}}}
    base = Config.model_validate(tree)
    ms = sweep_members(base, 2)
    assert [m.label for m in ms] == ["default"] * 2 + [f'distill.vocab_alignment="span", teachers.0.from="{other}"'] * 2
    span = member_config(base, ms[2])
    assert span.teachers[0].from_ == str(other) and span.distill.vocab_alignment == "span"
    assert teacher_home(base, ms[2]).distill.vocab_alignment == "span"  # its teachers are vetted under its own alignment
    assert member_config(base, ms[0]).teachers[0].from_ == str(same)


def test_the_dev_text_read_again_by_the_same_tokenizer_is_dev_bin(prepared_cfg: Config) -> None:
    from babyllama.data.tokenizer import load_tokenizer
    from babyllama.data.tokens import load_tokens
    from babyllama.evaluate.perplexity import own_dev_tokens

    ids = own_dev_tokens(load_tokenizer(prepared_cfg.data_dir), prepared_cfg.data_dir, 2)
    assert ids.tolist() == [int(i) for i in load_tokens(prepared_cfg.data_dir, "dev")]


def test_an_existing_teacher_with_its_own_tokenizer_is_evaluated_per_word(prepared_cfg: Config, tmp_path: Path) -> None:
    from babyllama.evaluate.registry import model_headlines, model_results
    from babyllama.sweep_report import read_member

    foreign = _foreign_with_tokenizer(prepared_cfg, tmp_path, 280)
    tree = prepared_cfg.model_dump(mode="json", by_alias=True)
    tree |= {"out_dir": str(tmp_path / "ext"), "control": False, "teachers": [{"name": "f", "from": str(foreign)}],
             "distill": {**tree["distill"], "vocab_alignment": "span"},
             "eval": {"blimp": str(Path(__file__).parent / "fixtures" / "eval" / "blimp_original")}}
    assert main(["run", str(_write(tmp_path, tree))]) == 0
    cfg = Config.model_validate(tree)
    ppl = model_results(cfg, "f")["perplexity"]
    assert ppl["tokenizer"] == "own" and "ce_nats_per_token" not in ppl and ppl["bits_per_word"] > 0
    words = json.loads((cfg.data_dir / "manifest.json").read_text())["splits"]["dev"]["words"]
    assert ppl["dev_words"] == words and ppl["own_dev_tokens"] > words  # its own tokens of the same words
    headlines = model_headlines(cfg, "f")
    assert "perplexity" not in headlines and "blimp" in headlines  # no per-token CE in the student's unit
    report = (cfg.out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| f | external teacher |"))
    assert f"{100 * headlines['blimp']:.1f}" in row and f"{ppl['bits_per_word']:.4f}" in row
    assert "f: dev loss: read with its own tokenizer" in report
    numbers, _ = read_member(cfg)
    assert numbers["f"]["dev_ce"] is None and numbers["f"]["bits_per_word"] == ppl["bits_per_word"]
