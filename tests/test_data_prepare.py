"""The whole data stage through `prepare(cfg)`: tokenizer, token files, manifest, round trip, skip/rebuild."""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from babyllama.config import Config
from babyllama.data import prepare as prepare_module
from babyllama.data.cleaning import CLEANING_VERSION, clean
from babyllama.data.prepare import prepare
from babyllama.data.tokenizer import load_tokenizer, train_tokenizer
from babyllama.data.tokens import load_tokens, read_manifest, token_dtype
from babyllama.errors import UserError
from test_data_corpora import make_babylm_2023, make_babylm_2024


def make_cfg(tmp_path: Path, corpus: Path | str, **data) -> Config:
    return Config.model_validate({
        "out_dir": str(tmp_path / "run"),
        "seed": 3,
        "data": {"corpus": str(corpus), "seq_len": 16, **data},
        "tokenizer": {"vocab_size": 320, "min_frequency": 2},
        "logging": {"progress": False},
    })


def pieces(tokens: np.ndarray) -> list[list[int]]:
    """Split an 'eos' token stream into its documents."""
    out, cur = [], []
    for t in tokens.tolist():
        if t == 2:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    assert cur == [], "the stream must end with </s>"
    return out


def nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def test_manifest_has_the_contract_keys(tiny_cfg):
    m = prepare(tiny_cfg)
    for key in ("dtype", "vocab_size", "special_tokens", "tokenizer_hash", "cleaning_version", "separator", "seq_len",
                "data_hash", "splits", "sources", "ledger", "inputs_hash"):
        assert key in m, key
    assert m["special_tokens"] == {"pad": 0, "bos": 1, "eos": 2}
    assert m["cleaning_version"] == CLEANING_VERSION and m["dtype"] == "uint16" and m["separator"] == "eos"
    for split in ("train", "dev"):
        assert set(m["splits"][split]) >= {"file", "tokens", "words", "characters"}
        assert len(load_tokens(tiny_cfg.data_dir, split)) == m["splits"][split]["tokens"]
    for src in m["sources"].values():
        assert set(src) >= {"split", "words", "characters", "tokens", "replaced_bytes", "cleaner"}
    assert set(m["ledger"]) >= {"words_by_source", "total_words", "budget", "within_budget"}
    assert read_manifest(tiny_cfg.data_dir) == m
    tokens = load_tokens(tiny_cfg.data_dir, "train")
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable


def test_tokenizer_loads_with_plain_autotokenizer(tiny_cfg):
    m = prepare(tiny_cfg)
    tok = AutoTokenizer.from_pretrained(str(tiny_cfg.data_dir / "tokenizer"))
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == m["vocab_size"] <= tiny_cfg.tokenizer.vocab_size
    assert tok.model_max_length == 32  # the fewest positions of the config's models
    ids = tok("The cat sees the ball.").input_ids  # no BOS/EOS added on encode, as in the reference
    assert not {0, 1, 2} & set(ids) and tok.decode(ids) == " The cat sees the ball."
    assert load_tokenizer(tiny_cfg.data_dir).get_vocab() == tok.get_vocab()
    config = json.loads((tiny_cfg.data_dir / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_eos_round_trip_reproduces_the_cleaned_lines(tmp_path):
    """BabyLM 2023 layout with its sibling dev: train.bin decodes to exactly the cleaned .train lines."""
    train_dir = make_babylm_2023(tmp_path)
    (train_dir / "gutenberg.train").write_bytes("Café “quoted” — naïve.\n\ufb01ne ligature\n".encode() + b"bad byte \xff here\n")
    cfg = make_cfg(tmp_path, train_dir)
    m = prepare(cfg)
    assert m["dev_origin"] == str(tmp_path / "babylm_dev")
    tok = load_tokenizer(cfg.data_dir)
    for split, folder, suffix in (("train", train_dir, ".train"), ("dev", tmp_path / "babylm_dev", ".dev")):
        expected = []
        for f in sorted(folder.glob(f"*{suffix}")):
            text = f.read_bytes().decode("utf-8", errors="replace")
            expected += [line for line in clean(f.stem, text).split("\n") if line.strip()]
        decoded = [tok.decode(p) for p in pieces(load_tokens(cfg.data_dir, split))]
        assert decoded == [" " + nfkc(line) if not line.startswith(" ") else nfkc(line) for line in expected]
    assert m["sources"]["train/gutenberg"]["replaced_bytes"] > 0
    assert m["sources"]["train/wikipedia"]["cleaner"] == "wikipedia"
    assert m["sources"]["train/qed"]["cleaner"] == "qed"


def test_separator_none_is_the_reference_stream(tmp_path):
    train_dir = make_babylm_2024(tmp_path)
    cfg = make_cfg(tmp_path, train_dir, separator="none")
    m = prepare(cfg)
    tokens = load_tokens(cfg.data_dir, "train")
    assert 0 not in tokens and 1 not in tokens and 2 not in tokens
    texts = [clean(f.stem, f.read_text(encoding="utf-8")) for f in sorted(train_dir.glob("*.train"))]
    tok = load_tokenizer(cfg.data_dir)
    assert tok.decode(tokens.tolist()) == "".join(" " + nfkc(t) for t in texts)
    assert m["sources"]["train/childes"]["cleaner"] == "extra_spaces"
    assert sum(s["tokens"] for k, s in m["sources"].items() if k.startswith("train/")) == len(tokens)


def test_held_out_split_is_seeded_by_line_and_disjoint(tmp_path, text_corpus):
    cfg = make_cfg(tmp_path, text_corpus, dev="split", dev_fraction=0.1)
    m = prepare(cfg)
    lines = [x for f in sorted(text_corpus.glob("*.txt")) for x in f.read_text().split("\n") if x.strip()]
    tok = load_tokenizer(cfg.data_dir)
    train = [tok.decode(p)[1:] for p in pieces(load_tokens(cfg.data_dir, "train"))]
    dev = [tok.decode(p)[1:] for p in pieces(load_tokens(cfg.data_dir, "dev"))]
    assert len(dev) == 60 and len(train) == 540 and sorted(train + dev) == sorted(lines)
    assert m["splits"]["dev"]["lines"] == 60
    # the same seed gives the same dev lines in another folder; another seed gives others
    same = prepare(cfg.model_copy(update={"out_dir": str(tmp_path / "again")}))
    assert same["data_hash"] == m["data_hash"]
    other = prepare(cfg.model_copy(update={"out_dir": str(tmp_path / "other"), "seed": 4}))
    assert other["data_hash"] != m["data_hash"]


def test_max_words_keeps_whole_lines_in_corpus_order(tmp_path, text_corpus):
    cfg = make_cfg(tmp_path, text_corpus, dev="split", max_words=500, word_budget=400)
    m = prepare(cfg)
    ledger = m["ledger"]
    assert 490 <= ledger["total_words"] <= 500 and m["splits"]["train"]["words"] == ledger["total_words"]
    assert ledger["words_by_source"] == {"part0.txt": ledger["total_words"], "part1.txt": 0}
    assert ledger["budget"] == 400 and ledger["within_budget"] is False
    full = prepare(make_cfg(tmp_path / "full", text_corpus, dev="split"))
    # the cap does not move the dev split (its token count differs only because the tokenizer does)
    assert {k: v for k, v in full["splits"]["dev"].items() if k != "tokens"} == \
        {k: v for k, v in m["splits"]["dev"].items() if k != "tokens"}


def test_ledger_counts_words_per_source_and_prints_them(tmp_path, capsys):
    train_dir = make_babylm_2023(tmp_path)
    m = prepare(make_cfg(tmp_path, train_dir))
    out = capsys.readouterr().out
    words = m["ledger"]["words_by_source"]
    assert words["switchboard"] == 3 * 8  # 'A: how are you doing' + 'B: fine thanks', three times
    assert m["ledger"]["total_words"] == sum(words.values()) == m["splits"]["train"]["words"]
    assert m["ledger"]["within_budget"] is True
    assert f"word budget: {sum(words.values()):,} training words of 10,000,000 (within budget)" in out
    assert "train/open_subtitles" in out


def test_rerun_with_unchanged_inputs_does_no_work(tiny_cfg, capsys, monkeypatch):
    first = prepare(tiny_cfg)
    stamps = {p: p.stat().st_mtime_ns for p in tiny_cfg.data_dir.rglob("*") if p.is_file()}
    monkeypatch.setattr(prepare_module, "train_tokenizer", lambda *a, **k: pytest.fail("retrained"))
    assert prepare(tiny_cfg) == first
    assert "up to date" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in tiny_cfg.data_dir.rglob("*") if p.is_file()} == stamps


def test_seq_len_change_updates_the_manifest_without_rebuilding(tiny_cfg, monkeypatch):
    first = prepare(tiny_cfg)
    monkeypatch.setattr(prepare_module, "train_tokenizer", lambda *a, **k: pytest.fail("retrained"))
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.data.seq_len = 8
    again = prepare(cfg)
    assert again["seq_len"] == 8 and again["data_hash"] == first["data_hash"]


@pytest.mark.parametrize("change", ["corpus_file", "vocab_size", "separator", "max_words", "dev_fraction"])
def test_any_change_rebuilds(tiny_cfg, text_corpus, change):
    first = prepare(tiny_cfg)
    cfg = tiny_cfg.model_copy(deep=True)
    if change == "corpus_file":
        with open(text_corpus / "part1.txt", "a") as f:
            f.write("A brand new line appears here.\n")
    elif change == "vocab_size":
        cfg.tokenizer.vocab_size = 290
    elif change == "separator":
        cfg.data.separator = "none"
    elif change == "max_words":
        cfg.data.max_words = 1000
    else:
        cfg.data.dev_fraction = 0.2
    second = prepare(cfg)
    assert second["inputs_hash"] != first["inputs_hash"]
    assert second["data_hash"] != first["data_hash"]
    assert read_manifest(cfg.data_dir)["data_hash"] == second["data_hash"]


def test_interrupted_prepare_leaves_nothing_a_loader_accepts(tiny_cfg, text_corpus, monkeypatch):
    prepare(tiny_cfg)
    with open(text_corpus / "part0.txt", "a") as f:
        f.write("One more line for a rebuild.\n")

    def crash(path, tokens):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_tokens", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny_cfg)
    for split in ("train", "dev"):
        with pytest.raises(UserError, match="not prepared — run `babyllama prepare CONFIG` first"):
            load_tokens(tiny_cfg.data_dir, split)
    monkeypatch.undo()
    assert prepare(tiny_cfg)["splits"]["train"]["tokens"] == len(load_tokens(tiny_cfg.data_dir, "train"))


def test_loader_rejects_missing_and_truncated_files(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="not prepared"):
        load_tokens(tmp_path / "nowhere", "train")
    prepare(tiny_cfg)
    path = tiny_cfg.data_dir / "train.bin"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 2)
    with pytest.raises(UserError, match="not prepared"):
        load_tokens(tiny_cfg.data_dir, "train")
    os.remove(tiny_cfg.data_dir / "dev.bin")
    with pytest.raises(UserError, match="not prepared"):
        load_tokens(tiny_cfg.data_dir, "dev")
    # prepare notices the damage and rebuilds
    prepare(tiny_cfg)
    assert len(load_tokens(tiny_cfg.data_dir, "train")) == read_manifest(tiny_cfg.data_dir)["splits"]["train"]["tokens"]


def test_embedded_kjv_prepares_and_is_labelled(tmp_path, capsys):
    m = prepare(make_cfg(tmp_path, "embedded:kjv", max_words=3000))
    assert m["format"] == "embedded:kjv" and "NOT BabyLM" in m["note"]
    assert m["ledger"]["total_words"] <= 3000 and m["sources"]["train/kjv"]["cleaner"] == "unchanged"
    assert "NOT BabyLM data" in capsys.readouterr().out


def test_token_dtype_widens_for_large_vocabularies():
    assert token_dtype(16000) == np.uint16 and token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32


def test_a_vocabulary_without_room_for_the_bytes_is_a_user_error():
    with pytest.raises(UserError, match="too small"):
        train_tokenizer([["some text"]], vocab_size=100, min_frequency=2, progress=False)
