"""Benchmark `babyllama prepare` on a synthetic BabyLM-2023-shaped corpus.

Writes ``babylm_10M/*.train`` and ``babylm_dev/*.dev`` (the ten 2023 sources, in roughly BabyLM's
proportions, with the quirks each cleaner targets) into a temporary folder, runs the whole data stage
(cleaning, 16k BPE training, encoding, writing) and prints the time beside the target: <= 180 s for 10M
training words on 2 CPU cores. The vocabulary is Zipf-distributed pseudo-words, so BPE has real merges to
learn. The dev split defaults to the train size, as in BabyLM 2023 (54M vs 52M characters).

    python benchmarks/bench_prepare.py                 # 10M words (the target)
    python benchmarks/bench_prepare.py --words 500000  # a quick run
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from babyllama.config import Config
from babyllama.data.prepare import prepare

TARGET_SECONDS = 180.0
TARGET_WORDS = 10_000_000
# Share of the training words per source, close to the BabyLM 2023 10M release.
SHARES = {"aochildes": 0.044, "bnc_spoken": 0.086, "cbt": 0.047, "children_stories": 0.034, "gutenberg": 0.259,
          "open_subtitles": 0.205, "qed": 0.108, "simple_wikipedia": 0.147, "switchboard": 0.013, "wikipedia": 0.057}
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwyz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ee")]


def make_vocabulary(rng: np.random.Generator, size: int) -> np.ndarray:
    n_syll = rng.integers(1, 4, size=size)
    words = {"".join(rng.choice(SYLLABLES, size=k)) for k in n_syll}
    return np.array(sorted(words))


def make_lines(rng: np.random.Generator, vocab: np.ndarray, n_words: int, source: str) -> list[str]:
    """Sentences of Zipf-distributed words with the formatting quirks of ``source``, at most ``n_words`` words
    as the data stage counts them (whitespace-separated: the quirks' " ." and headings count too)."""
    wanted, n_words = n_words, n_words + n_words // 10 + 10  # enough for the quirks' extra words, then cut
    ranks = np.minimum(rng.zipf(1.15, size=n_words), len(vocab)) - 1
    words = vocab[ranks]
    lengths = rng.integers(3, 22, size=n_words // 6 + 2)
    ends = np.cumsum(lengths)
    ends = ends[ends < n_words].tolist() + [n_words]
    lines, start = [], 0
    for i, end in enumerate(ends):
        if end <= start:
            continue
        sentence = " ".join(words[start:end])
        start = end
        sentence = sentence[0].upper() + sentence[1:] + (" ." if source in ("bnc_spoken", "cbt", "aochildes") else ".")
        if source == "qed" and i % 7 == 0:
            sentence = sentence.upper()
        elif source == "bnc_spoken" and i % 5 == 0:
            sentence = sentence.replace(" ", "  ", 3)
        elif source == "cbt" and i % 9 == 0:
            sentence += " The king 's horse ."
        elif source == "open_subtitles" and i % 200 == 0:
            sentence = "Subtitles by somebody"
        elif source == "wikipedia" and i % 30 == 0:
            lines.append(f"= = = {sentence[:-1]} = = =")
            continue
        lines.append(sentence)
    kept, total = [], 0
    for line in lines:
        total += len(line.split())
        if total > wanted:
            break
        kept.append(line)
    return kept


def write_corpus(root: Path, train_words: int, dev_words: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    vocab = make_vocabulary(rng, 60_000)
    for folder, suffix, total in (("babylm_10M", "train", train_words), ("babylm_dev", "dev", dev_words)):
        (root / folder).mkdir(parents=True)
        for source, share in SHARES.items():
            lines = make_lines(rng, vocab, max(int(total * share), 10), source)
            (root / folder / f"{source}.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "babylm_10M"


def _input_identity_cost(cfg: Config) -> tuple[float, float, int]:
    """(seconds to hash every input file by content, seconds to stat them, their total bytes), cold memo."""
    from babyllama.data.corpora import resolve_corpus
    from babyllama.data.prepare import inputs_hash
    from babyllama.io import forget_file_hashes

    corpus = resolve_corpus(cfg.data)
    forget_file_hashes()
    t = time.perf_counter()
    inputs_hash(cfg, corpus)
    hashing = time.perf_counter() - t
    t = time.perf_counter()
    sizes = [f.path.stat().st_size for f in corpus.files]
    return hashing, time.perf_counter() - t, sum(sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--words", type=int, default=TARGET_WORDS, help="training words to generate (default 10M)")
    ap.add_argument("--dev-words", type=int, default=None, help="dev words (default: same as --words, like BabyLM 2023)")
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    dev_words = args.dev_words if args.dev_words is not None else args.words

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        train_dir = write_corpus(root, args.words, dev_words, seed=0)
        print(f"generated {args.words:,} train + {dev_words:,} dev words in {time.perf_counter() - t:.1f} s "
              "(not timed below)")
        cfg = Config.model_validate({
            "out_dir": str(root / "run"),
            "data": {"corpus": str(train_dir), "dev": "sibling"},
            "tokenizer": {"vocab_size": args.vocab_size},
            "logging": {"progress": not args.quiet},
        })
        t = time.perf_counter()
        manifest = prepare(cfg)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        prepare(cfg)
        rerun = time.perf_counter() - t
        hashing, stamping, corpus_bytes = _input_identity_cost(cfg)

    words = manifest["splits"]["train"]["words"]
    all_words = words + manifest["splits"]["dev"]["words"]
    scaled = seconds * TARGET_WORDS / max(words, 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print()
    print(f"machine: {os.cpu_count()} CPU cores, load average {load:.1f} at the end (a shared machine slows this)")
    print(f"prepare: {seconds:.1f} s for {words:,} train + {all_words - words:,} dev words "
          f"-> {words / seconds:,.0f} train words/s ({all_words / seconds:,.0f} words/s in all)")
    print(f"target : <= {TARGET_SECONDS:.0f} s for {TARGET_WORDS:,} train words on 2 cores; "
          f"ours {'measured' if words >= TARGET_WORDS * 0.95 else 'scaled linearly'}: {scaled:.1f} s")
    print("stages : " + ", ".join(f"{k} {v:.1f} s" for k, v in manifest["timings"].items()))
    print(f"inputs : sha256 of all {corpus_bytes / 1e6:,.0f} MB of corpus files {hashing:.2f} s "
          f"({100 * hashing / seconds:.1f}% of prepare; a no-op rerun took {rerun:.2f} s in all); "
          f"reference: the size+mtime stamps it replaced {stamping * 1000:.1f} ms")
    print(f"peak memory (this process): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    print(f"re-run with unchanged inputs: {rerun * 1000:.0f} ms (skipped)")


if __name__ == "__main__":
    main()
