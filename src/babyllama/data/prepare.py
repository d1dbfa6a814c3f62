"""`babyllama prepare`: corpus -> cleaned lines -> BPE tokenizer -> train.bin / dev.bin + manifest.json.

Output, under ``<out_dir>/data/``: ``tokenizer/`` (a Hugging Face tokenizer folder), ``train.bin`` and
``dev.bin`` (flat token ids, see tokens.py) and ``manifest.json`` (counts, hashes, the word-budget ledger).

Separator (``data.separator``):

- ``eos`` (default): every non-empty line of the cleaned text is one document. Each document is encoded on
  its own (the byte-level pre-tokenizer adds its leading space) and followed by ``</s>`` (id 2) in the token
  stream. Training windows therefore see ``</s>`` before every document but the first, which is why BLiMP
  scoring conditions each sentence on ``</s>`` by default: the model has seen that context.
- ``none``: the reference code's stream. Each source file's cleaned lines are joined with ``\\n`` (every
  line ends with one) and encoded as one text, files are concatenated, and no special token appears.

Dev split (``data.dev``): the sibling BabyLM dev folder (``auto`` when it exists, or ``sibling``), a path,
or a held-out split (``split``, and ``auto`` without a sibling). The held-out split works by line: in each
source file, ``round(dev_fraction x non-empty lines)`` lines are drawn without replacement by a generator
seeded with ``(seed, crc32(source name))``; they form that source's dev part and the rest stays in train,
in order. So the split depends only on the corpus, the seed and the fraction (at least one dev line
overall). ``data.max_words`` is applied after the split: training keeps whole lines in corpus order
(sources sorted by name) until the next line would pass the cap, so dev is the same whatever the cap.

Over-long lines: a line of more than ``MAX_LINE_CHARS`` characters (a file with no line breaks, a blob
with no spaces) would make tokenizer training and encoding take minutes and gigabytes for one line, so
it is cut into pieces of at most that length, at a space where there is one (the space becomes the line
break); each piece is then a line like any other. prepare warns, and the ledger counts them per source.

Re-running is free when nothing changed: ``inputs_hash`` covers every input file's path and content
(sha256; an edit that keeps the size and modification time still rebuilds, a `touch` does not), the
settings that change the output and the code versions; any difference rebuilds. Hashing costs one read
of the corpus (see the note on benchmarks/bench_prepare.py in the README).
Nothing is written until all input has been read, cleaned and encoded; then the old manifest is removed,
the tokenizer and token files are replaced atomically, and the new manifest is written last.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import Tokenizer

from babyllama import progress as bars
from babyllama.config import Config
from babyllama.data.cleaning import CLEANERS, CLEANING_VERSION, cleaner_name
from babyllama.data.corpora import Corpus, SourceFile, read_source, resolve_corpus
from babyllama.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TOKENIZER_DIR,
    batched,
    copy_tokenizer,
    existing_tokenizer,
    save_tokenizer,
    set_model_max_length,
    tokenizer_hash,
    train_tokenizer,
)
from babyllama.data.tokens import MANIFEST, SPLIT_FILES, load_tokens, read_manifest, token_dtype, write_tokens
from babyllama.errors import UserError
from babyllama.io import atomic_write_json, cached_file_sha256, stable_hash

#: Version of the token-file layout and of the rules in this module; part of inputs_hash.
PREPARE_VERSION = 2
#: Longest line kept whole (see the module docstring); BabyLM's longest paragraphs are far shorter.
MAX_LINE_CHARS = 10_000
_BATCH = 2048


@dataclass
class Source:
    """The cleaned lines of one source in one split."""

    name: str
    split: str
    file: str
    cleaner: str
    lines: list[str]
    replaced: int = 0
    long_lines: int = 0  # lines longer than MAX_LINE_CHARS, cut into pieces
    tokens: int = 0

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def words(self) -> int:
        return sum(len(line.split()) for line in self.lines)

    @property
    def characters(self) -> int:
        return sum(len(line) for line in self.lines)


def prepare(cfg: Config) -> dict:
    """Build (or find up to date) the prepared data of ``cfg``; return its manifest."""
    data = cfg.data
    corpus = resolve_corpus(data)
    data_dir = cfg.data_dir
    ihash = inputs_hash(cfg, corpus)
    current = _up_to_date(data_dir, ihash)
    if current is not None:
        current = _refresh(cfg, current)
        _check_teachers(cfg, data_dir / TOKENIZER_DIR / "tokenizer.json")
        print(f"prepare: {data_dir} is up to date (same inputs and settings), nothing to do")
        return current

    t0 = time.perf_counter()
    print(f"prepare: {corpus.format} corpus at {corpus.root}" + (f" — {corpus.note}" if corpus.note else ""))
    train = [_load(src, data.separator) for src in corpus.train]
    if corpus.dev:
        dev = [_load(src, data.separator) for src in corpus.dev]
        print(f"prepare: dev split from {corpus.dev_origin}")
    else:
        dev = hold_out(train, data.dev_fraction, cfg.seed)
        print(f"prepare: dev split held out by line ({data.dev_fraction:g} of each source, seed {cfg.seed})")
    if data.max_words is not None:
        cap_words(train, data.max_words)
    _check_nonempty(cfg, corpus, train, dev)
    timings = {"read_clean": time.perf_counter() - t0}

    t = time.perf_counter()
    progress = cfg.logging.progress
    tok, vocab_size, special = _tokenizer(cfg, train, progress)
    if cfg.tokenizer.from_ is None:
        _check_teachers(cfg, tok)
    dtype = token_dtype(vocab_size)
    timings["tokenizer"] = time.perf_counter() - t
    t = time.perf_counter()
    arrays = {split: encode(tok, sources, data.separator, dtype, progress, eos_id=special["eos"])
              for split, sources in (("train", train), ("dev", dev))}
    timings["encode"] = time.perf_counter() - t
    if inputs_hash(cfg, corpus) != ihash:
        raise UserError(f"data.corpus {data.corpus!r}: input files changed while preparing; run prepare again")

    # Everything is in memory: now replace the outputs, manifest last.
    t = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)
    if cfg.tokenizer.from_ is not None:
        copy_tokenizer(_tokenizer_source(cfg), data_dir / TOKENIZER_DIR, _model_max_length(cfg))
    else:
        save_tokenizer(tok, data_dir / TOKENIZER_DIR, _model_max_length(cfg))
    for split, arr in arrays.items():
        write_tokens(data_dir / SPLIT_FILES[split], arr)
    tok_hash = tokenizer_hash(data_dir / TOKENIZER_DIR)
    manifest = _manifest(cfg, corpus, train, dev, arrays, vocab_size, dtype, tok_hash, ihash)
    manifest["special_tokens"] = special
    timings["write"] = time.perf_counter() - t
    manifest["seconds"] = round(time.perf_counter() - t0, 2)
    manifest["timings"] = {k: round(v, 2) for k, v in timings.items()}
    atomic_write_json(data_dir / MANIFEST, manifest)
    print(format_ledger(manifest))
    print(f"prepare: wrote {data_dir} (train {len(arrays['train']):,} tokens, dev {len(arrays['dev']):,} tokens, "
          f"vocab {vocab_size}) in {manifest['seconds']:.1f} s ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in manifest["timings"].items()) + ")")
    return manifest


def _check_teachers(cfg: Config, student: Path | Tokenizer) -> None:
    """An existing teacher that cannot share the student's tokenizer (vocab_alignment 'exact') is refused
    as soon as that tokenizer is known: the prepared one, or the one just trained, before anything is written."""
    from babyllama.existing import check_teacher_vocabularies

    if cfg.distill.vocab_alignment != "exact" or cfg.student is None or not cfg.external_teachers:
        return
    if isinstance(student, Path):
        check_teacher_vocabularies(cfg, student)
        return
    with tempfile.TemporaryDirectory() as tmp:  # the very file prepare would write, to compare it byte for byte
        save_tokenizer(student, Path(tmp) / TOKENIZER_DIR, _model_max_length(cfg))
        check_teacher_vocabularies(cfg, Path(tmp) / TOKENIZER_DIR / "tokenizer.json")


def _tokenizer_source(cfg: Config) -> Path:
    from babyllama.existing import tokenizer_folder

    assert cfg.tokenizer.from_ is not None
    return tokenizer_folder(cfg.tokenizer.from_, "tokenizer.from")


def _tokenizer(cfg: Config, train: list[Source], progress: bool) -> tuple[Tokenizer, int, dict[str, int | None]]:
    """(tokenizer, vocabulary size, special ids): an existing model's (tokenizer.from), or a BPE trained
    on the train split."""
    if cfg.tokenizer.from_ is not None:
        tok, vocab_size, special = existing_tokenizer(_tokenizer_source(cfg))
        if cfg.data.separator == "eos" and special["eos"] is None:
            raise UserError(f"tokenizer.from {cfg.tokenizer.from_}: the tokenizer has no eos token to end each line "
                            "with; set data.separator: none")
        print(f"prepare: tokenizer taken from {_tokenizer_source(cfg)} ({vocab_size:,} tokens, not trained here)")
        return tok, vocab_size, special
    n_train_lines = sum(len(s.lines) for s in train)
    tok = train_tokenizer(
        bars.iterate(_training_text(train, cfg.data.separator), "prepare tokenizer", "batch", enabled=progress,
                     total=-(-n_train_lines // _BATCH)),
        cfg.tokenizer.vocab_size,
        cfg.tokenizer.min_frequency,
        length=n_train_lines,
        progress=False,
    )
    vocab_size = tok.get_vocab_size()
    if vocab_size < cfg.tokenizer.vocab_size:
        print(f"prepare: the corpus supports only {vocab_size} of the {cfg.tokenizer.vocab_size} requested tokens")
    return tok, vocab_size, {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID}


# -- inputs and skip -----------------------------------------------------------------------------------


def inputs_hash(cfg: Config, corpus: Corpus) -> str:
    """What decides the output: input files (path, content), output-changing settings, code versions."""
    files = [[f.split, f.name, str(f.path.resolve()), cached_file_sha256(f.path)] for f in corpus.files]
    settings = {
        "format": corpus.format,
        "dev_origin": corpus.dev_origin,
        "max_words": cfg.data.max_words,
        "separator": cfg.data.separator,
        "vocab_size": cfg.tokenizer.vocab_size,
        "min_frequency": cfg.tokenizer.min_frequency,
        "cleaning_version": CLEANING_VERSION,
        "prepare_version": PREPARE_VERSION,
        "tokenizers": tokenizers.__version__,
    }
    if cfg.tokenizer.from_ is not None:  # the tokenizer itself (and the model's vocabulary) replaces the BPE settings
        source = _tokenizer_source(cfg)
        del settings["vocab_size"], settings["min_frequency"]
        settings["tokenizer_from"] = [cached_file_sha256(source / name) for name in ("tokenizer.json", "config.json",
                                                                                     "tokenizer_config.json")
                                      if (source / name).is_file()]
    if not corpus.dev:  # only a held-out split depends on the seed and the fraction
        settings.update(seed=cfg.seed, dev_fraction=cfg.data.dev_fraction)
    return stable_hash({"files": files, "settings": settings})


def _up_to_date(data_dir: Path, ihash: str) -> dict | None:
    try:
        manifest = read_manifest(data_dir)
        if manifest.get("inputs_hash") != ihash:
            return None
        if tokenizer_hash(data_dir / TOKENIZER_DIR) != manifest.get("tokenizer_hash"):
            return None
        for split in SPLIT_FILES:
            load_tokens(data_dir, split)
    except (UserError, OSError):
        return None
    return manifest


def _refresh(cfg: Config, manifest: dict) -> dict:
    """Settings that do not change any token id (seq_len, the tokenizer's max length) are updated in place."""
    length = _model_max_length(cfg)
    changed = set_model_max_length(cfg.data_dir / TOKENIZER_DIR, length)
    if changed or manifest.get("seq_len") != cfg.data.seq_len or manifest.get("model_max_length") != length:
        manifest = {**manifest, "seq_len": cfg.data.seq_len, "model_max_length": length}
        atomic_write_json(cfg.data_dir / MANIFEST, manifest)
    return manifest


def _model_max_length(cfg: Config) -> int:
    """The tokenizer's model_max_length: the fewest positions any model of the experiment has."""
    models = cfg.models()
    return min(m.max_position_embeddings for m in models) if models else cfg.data.seq_len


# -- text ----------------------------------------------------------------------------------------------


def _load(src: SourceFile, separator: str) -> Source:
    text, replaced = read_source(src)
    cleaner = cleaner_name(src.name)
    lines = CLEANERS[cleaner](text).split("\n")
    if separator == "eos":
        lines = [line for line in lines if line.strip()]
    elif lines and lines[-1] == "":
        lines.pop()  # the text's final line break, restored when the lines are joined again
    long_lines = sum(len(line) > MAX_LINE_CHARS for line in lines)
    if long_lines:
        lines = [piece for line in lines for piece in split_long_line(line, MAX_LINE_CHARS)]
        print(f"prepare: warning: {src.path}: {long_lines} line(s) longer than {MAX_LINE_CHARS:,} characters cut "
              "into pieces (at spaces where possible)", flush=True)
    return Source(src.name, src.split, str(src.path), cleaner, lines, replaced, long_lines=long_lines)


def split_long_line(line: str, limit: int) -> list[str]:
    """``line`` in pieces of at most ``limit`` characters, cut at the last space before the limit (the
    space is dropped) or, in a stretch with no space, at the limit itself."""
    pieces = []
    start = 0
    while len(line) - start > limit:
        cut = line.rfind(" ", start + 1, start + limit + 1)
        if cut <= start:
            pieces.append(line[start : start + limit])
            start += limit
        else:
            pieces.append(line[start:cut])
            start = cut + 1
    pieces.append(line[start:])
    return pieces


def hold_out(train: list[Source], fraction: float, seed: int) -> list[Source]:
    """Move a seeded ``fraction`` of each source's non-empty lines to dev (see the module docstring)."""
    picks: list[np.ndarray] = []
    for src in train:
        candidates = np.array([i for i, line in enumerate(src.lines) if line.strip()], dtype=np.int64)
        k = int(round(fraction * len(candidates)))
        rng = np.random.default_rng([seed, zlib.crc32(src.name.encode())])
        picks.append(np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0])
    if not any(len(p) for p in picks):  # tiny corpus: still hold out one line from the largest source
        sizes = [sum(1 for line in s.lines if line.strip()) for s in train]
        big = int(np.argmax(sizes))
        if sizes[big] >= 2:
            candidates = [i for i, line in enumerate(train[big].lines) if line.strip()]
            rng = np.random.default_rng([seed, zlib.crc32(train[big].name.encode())])
            picks[big] = np.array([candidates[int(rng.integers(len(candidates)))]], dtype=np.int64)
    dev = []
    for src, pick in zip(train, picks, strict=True):
        chosen = set(pick.tolist())
        dev.append(Source(src.name, "dev", src.file, src.cleaner, [src.lines[i] for i in pick]))
        src.lines = [line for i, line in enumerate(src.lines) if i not in chosen]
    return dev


def cap_words(train: list[Source], max_words: int) -> None:
    """Keep whole lines, in corpus order, while the running word count stays within ``max_words``."""
    total = 0
    full = False
    for src in train:
        kept = []
        for line in src.lines:
            n = len(line.split())
            if full or total + n > max_words:
                full = True
                break
            total += n
            kept.append(line)
        src.lines = kept


def _check_nonempty(cfg: Config, corpus: Corpus, train: list[Source], dev: list[Source]) -> None:
    if not _has_words(train):
        if cfg.data.max_words is not None and any(src.path.stat().st_size for src in corpus.train):
            raise UserError(f"data.max_words {cfg.data.max_words} keeps no line of the corpus (the first line is longer)")
        raise UserError(f"data.corpus {cfg.data.corpus!r}: empty corpus (no words after cleaning)")
    if not _has_words(dev):
        if corpus.dev:
            raise UserError(f"data.dev: {corpus.dev_origin}: the dev files hold no words after cleaning")
        raise UserError(f"data.corpus {cfg.data.corpus!r}: too small to hold out a dev split (needs at least 2 lines)")


def _has_words(sources: list[Source]) -> bool:
    return any(line.strip() for s in sources for line in s.lines)


def _training_text(train: list[Source], separator: str):
    """Batches of the sequences the tokenizer is trained on: what will be encoded, line by line."""
    lines = chain.from_iterable(s.lines for s in train)
    if separator == "none":
        lines = (line + "\n" for line in lines)
    return batched(lines, _BATCH)


def encode(tok, sources: list[Source], separator: str, dtype: np.dtype, progress: bool,
           eos_id: int | None = EOS_ID) -> np.ndarray:
    """One split's token stream (no special tokens but ``eos_id`` after each line when the separator is
    'eos'); also records each source's token count."""
    parts: list[np.ndarray] = []
    bar = bars.bar(sum(len(s.lines) for s in sources), f"prepare encode {sources[0].split}", "line", enabled=progress)
    if separator == "none":
        # whole files are the units; a few at a time keeps every core busy and the bar moving
        for group in batched(sources, os.cpu_count() or 1):
            texts = ["".join(line + "\n" for line in s.lines) for s in group]
            for src, enc in zip(group, tok.encode_batch_fast(texts, add_special_tokens=False), strict=True):
                ids = enc.ids
                src.tokens = len(ids)
                parts.append(np.asarray(ids, dtype=dtype))
                bar.update(len(src.lines))
    else:
        for src in sources:
            src.tokens = 0
            for batch in batched(src.lines, _BATCH):
                # each .ids access builds a new list; an existing tokenizer's BOS/EOS template is not applied
                docs = [e.ids for e in tok.encode_batch_fast(batch, add_special_tokens=False)]
                count = sum(map(len, docs)) + len(docs)
                ids = chain.from_iterable(chain(d, (eos_id,)) for d in docs)
                parts.append(np.fromiter(ids, dtype=dtype, count=count))
                src.tokens += count
                bar.update(len(batch))
    bar.close()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


# -- manifest and ledger -------------------------------------------------------------------------------


def _manifest(cfg, corpus, train, dev, arrays, vocab_size, dtype, tok_hash, ihash) -> dict:
    sources = {}
    for s in train + dev:
        sources[s.key] = {"name": s.name, "split": s.split, "file": s.file, "cleaner": s.cleaner, "words": s.words,
                          "characters": s.characters, "tokens": s.tokens, "lines": len(s.lines),
                          "replaced_bytes": s.replaced, "long_lines_split": s.long_lines}
    splits = {}
    for split, group in (("train", train), ("dev", dev)):
        rows = [sources[s.key] for s in group]
        splits[split] = {"file": SPLIT_FILES[split], "tokens": int(len(arrays[split])),
                         "words": sum(r["words"] for r in rows), "characters": sum(r["characters"] for r in rows),
                         "lines": sum(r["lines"] for r in rows)}
    words = {s.name: sources[s.key]["words"] for s in train}
    total = sum(words.values())
    digests = {split: hashlib.sha256(memoryview(np.ascontiguousarray(a))).hexdigest() for split, a in arrays.items()}
    return {
        "prepare_version": PREPARE_VERSION,
        "corpus": cfg.data.corpus,
        "format": corpus.format,
        "note": corpus.note,
        "dev_origin": corpus.dev_origin,
        "dev_fraction": cfg.data.dev_fraction if not corpus.dev else None,
        "seed": cfg.seed,
        "max_words": cfg.data.max_words,
        "separator": cfg.data.separator,
        "seq_len": cfg.data.seq_len,
        "model_max_length": _model_max_length(cfg),
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "special_tokens": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID},
        "tokenizer": TOKENIZER_DIR,
        "tokenizer_hash": tok_hash,
        "cleaning_version": CLEANING_VERSION,
        "token_sha256": digests,
        "data_hash": stable_hash({"tokenizer": tok_hash, **digests}),
        "inputs_hash": ihash,
        "splits": splits,
        "sources": sources,
        "unknown_sources": sorted({s.name for s in train + dev if s.cleaner == "unknown"}),
        "ledger": {"words_by_source": words, "total_words": total, "budget": cfg.data.word_budget,
                   "within_budget": total <= cfg.data.word_budget,
                   "long_lines_split": sum(s.long_lines for s in train + dev)},
    }


def format_ledger(manifest: dict) -> str:
    """The per-source table and the word-budget line that prepare prints."""
    rows = [("source", "words", "characters", "tokens", "replaced", "cleaner")]
    for key, s in manifest["sources"].items():
        rows.append((key, f"{s['words']:,}", f"{s['characters']:,}", f"{s['tokens']:,}", f"{s['replaced_bytes']:,}",
                     s["cleaner"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i in (0, 5) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
             for r in rows]
    led = manifest["ledger"]
    verdict = "within" if led["within_budget"] else "OVER"
    lines.append(f"word budget: {led['total_words']:,} training words of {led['budget']:,} ({verdict} budget)")
    if led.get("long_lines_split"):
        lines.append(f"warning: {led['long_lines_split']:,} line(s) longer than {MAX_LINE_CHARS:,} characters were cut "
                     "into pieces")
    if manifest.get("unknown_sources"):
        lines.append(f"note: no cleaner for {', '.join(manifest['unknown_sources'])}: passed through unchanged")
    if manifest.get("note"):
        lines.append(f"note: {manifest['note']}")
    return "\n".join(lines)
