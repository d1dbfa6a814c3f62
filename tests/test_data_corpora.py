"""Corpus layouts: BabyLM 2023 / 2024 folders, plain text, embedded KJV; dev-split resolution; file reading."""

from __future__ import annotations

from pathlib import Path

import pytest

from babyllama.config import DataConfig
from babyllama.data.corpora import BABYLM_2023, BABYLM_2024, SourceFile, read_source, resolve_corpus
from babyllama.errors import UserError

# A few handwritten lines per source, with the quirks each cleaner targets.
SAMPLES = {
    "aochildes": "what  is that ?\nthat 's a ball .\n",
    "childes": "what  is that ?\nthat 's a ball .\n",
    "bnc_spoken": "well  I don't know , really .\nyeah .\n",
    "cbt": "The king 's horse ran away .\nShe could n't see .\n",
    "children_stories": "Once upon a time there was a fox.\nThe fox was very clever.\n",
    "gutenberg": "It was the best of times.\nIt was the worst of times.\n",
    "open_subtitles": "Where are you going?\nSubtitles by Nobody\nHome.\n",
    "qed": "WELCOME TO THE SHOW.\nToday we talk about cells.\n",
    "simple_wikipedia": "Paris is the capital of France.\nIt is a big city.\n",
    "simple_wiki": "Paris is the capital of France.\nIt is a big city.\n",
    "switchboard": "A: how are you doing\nB: fine thanks\n",
    "wikipedia": "\n= = = History = = =\n The town was founded long ago . \n It grew quickly . \n",
}


def make_babylm(root: Path, names: tuple[str, ...], train_dir: str, dev_dir: str | None) -> Path:
    """A BabyLM-style pair of folders with tiny handwritten files; returns the train folder."""
    train = root / train_dir
    train.mkdir(parents=True)
    for name in names:
        (train / f"{name}.train").write_text(SAMPLES[name] * 3, encoding="utf-8")
    if dev_dir is not None:
        (root / dev_dir).mkdir()
        for name in names:
            (root / dev_dir / f"{name}.dev").write_text(SAMPLES[name], encoding="utf-8")
    return train


def make_babylm_2023(root: Path, dev: bool = True) -> Path:
    return make_babylm(root, BABYLM_2023, "babylm_10M", "babylm_dev" if dev else None)


def make_babylm_2024(root: Path, dev: bool = True) -> Path:
    return make_babylm(root, BABYLM_2024, "train_10M", "dev" if dev else None)


def test_detects_babylm_2023_with_sibling_dev(tmp_path):
    train = make_babylm_2023(tmp_path)
    corpus = resolve_corpus(DataConfig(corpus=str(train)))
    assert corpus.format == "babylm-2023"
    assert [s.name for s in corpus.train] == sorted(BABYLM_2023)
    assert [s.name for s in corpus.dev] == sorted(BABYLM_2023)
    assert all(s.path.suffix == ".dev" and s.path.parent.name == "babylm_dev" for s in corpus.dev)


def test_detects_babylm_2024_with_sibling_dev(tmp_path):
    train = make_babylm_2024(tmp_path)
    corpus = resolve_corpus(DataConfig(corpus=str(train)))
    assert corpus.format == "babylm-2024"
    assert {s.name for s in corpus.train} == set(BABYLM_2024)
    assert corpus.dev_origin == str(tmp_path / "dev")


def test_shared_source_names_fall_back_to_the_folder_name(tmp_path):
    common = ("bnc_spoken", "gutenberg")
    assert resolve_corpus(DataConfig(corpus=str(make_babylm(tmp_path / "a", common, "train_100M", None)))).format == "babylm-2024"
    assert resolve_corpus(DataConfig(corpus=str(make_babylm(tmp_path / "b", common, "babylm_100M", None)))).format == "babylm-2023"


def test_format_override_wins_over_detection(tmp_path):
    train = make_babylm_2023(tmp_path)
    corpus = resolve_corpus(DataConfig(corpus=str(train), format="babylm-2024", dev="split"))
    assert corpus.format == "babylm-2024" and corpus.dev == []


def test_detects_text_folder_recursively_and_single_file(tmp_path):
    (tmp_path / "txt" / "sub").mkdir(parents=True)
    (tmp_path / "txt" / "b.txt").write_text("two\n")
    (tmp_path / "txt" / "sub" / "a.txt").write_text("one\n")
    (tmp_path / "txt" / "ignored.md").write_text("not text corpus\n")
    corpus = resolve_corpus(DataConfig(corpus=str(tmp_path / "txt")))
    assert corpus.format == "text"
    assert [s.name for s in corpus.train] == ["b.txt", "sub/a.txt"]
    single = resolve_corpus(DataConfig(corpus=str(tmp_path / "txt" / "b.txt")))
    assert single.format == "text" and [s.name for s in single.train] == ["b.txt"]


def test_auto_dev_without_sibling_holds_out_a_split(tmp_path):
    corpus = resolve_corpus(DataConfig(corpus=str(make_babylm_2023(tmp_path, dev=False))))
    assert corpus.dev == [] and corpus.dev_origin == "split"


def test_split_ignores_an_existing_sibling(tmp_path):
    corpus = resolve_corpus(DataConfig(corpus=str(make_babylm_2023(tmp_path)), dev="split"))
    assert corpus.dev == []


def test_sibling_required_but_missing_is_an_error(tmp_path):
    train = make_babylm_2023(tmp_path, dev=False)
    with pytest.raises(UserError, match="babylm_dev"):
        resolve_corpus(DataConfig(corpus=str(train), dev="sibling"))


def test_sibling_on_a_text_corpus_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    with pytest.raises(UserError, match="needs a BabyLM corpus"):
        resolve_corpus(DataConfig(corpus=str(tmp_path / "a.txt"), dev="sibling"))


def test_dev_path_folder_of_dev_files_or_text_files(tmp_path):
    train = make_babylm_2023(tmp_path)
    corpus = resolve_corpus(DataConfig(corpus=str(train), dev=str(tmp_path / "babylm_dev")))
    assert len(corpus.dev) == len(BABYLM_2023) and corpus.dev_origin == str(tmp_path / "babylm_dev")
    (tmp_path / "mydev").mkdir()
    (tmp_path / "mydev" / "x.txt").write_text("held out\n")
    corpus = resolve_corpus(DataConfig(corpus=str(train), dev=str(tmp_path / "mydev")))
    assert [(s.name, s.split) for s in corpus.dev] == [("x.txt", "dev")]


def test_bad_paths_are_user_errors(tmp_path):
    train = make_babylm_2023(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = [
        (DataConfig(corpus=str(tmp_path / "nope")), "path not found"),
        (DataConfig(corpus=str(tmp_path / "empty")), "no recognised files"),
        (DataConfig(corpus=str(train / "qed.train"), format="babylm-2023"), "expects a folder"),
        (DataConfig(corpus=str(tmp_path / "babylm_dev"), format="babylm-2023"), "no .train files"),
        (DataConfig(corpus=str(train), format="text"), "no .txt files"),
        (DataConfig(corpus=str(train), dev=str(tmp_path / "missing_dev")), "data.dev"),
        (DataConfig(corpus="embedded:wiki"), "unknown embedded corpus"),
    ]
    for data, message in cases:
        with pytest.raises(UserError, match=message):
            resolve_corpus(data)


def test_a_dev_folder_given_as_corpus_gets_a_hint(tmp_path):
    make_babylm_2023(tmp_path)
    with pytest.raises(UserError, match="holds .dev files"):
        resolve_corpus(DataConfig(corpus=str(tmp_path / "babylm_dev")))


def test_embedded_kjv_is_found_without_importing_bible_and_labelled():
    corpus = resolve_corpus(DataConfig(corpus="embedded:kjv"))
    assert corpus.format == "embedded:kjv" and "NOT BabyLM" in corpus.note
    text, replaced = read_source(corpus.train[0])
    lines = text.split("\n")
    assert lines[0] == "In the beginning God created the heaven and the earth."
    assert len([x for x in lines if x]) > 31000 and replaced == 0


def test_read_source_counts_replaced_bytes_and_normalises_line_breaks(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"\xef\xbb\xbfok \xff\xfe bad\r\nkeep \xef\xbf\xbd as is\rlast")
    text, replaced = read_source(SourceFile("x.txt", path, "train"))
    assert replaced == 2  # the two invalid bytes; the U+FFFD already in the file is not counted
    assert text == "ok \ufffd\ufffd bad\nkeep \ufffd as is\nlast"
