"""Benchmark BLiMP scoring: batched (ours) against one sentence per forward pass (the BabyLM 2023 pipeline).

Model: the demo student (configs/demo.yaml) if it has been trained (``runs/demo/models/baby-llama-demo``),
else a randomly initialised LLaMA of the same size with a BPE tokenizer of the demo's vocabulary size,
trained here in seconds on the BLiMP sentences themselves (scores are meaningless then; speed and
agreement are what we measure). Data: the real BLiMP (../shared/data/blimp beside the repository, or --data), the first
``--pairs`` pairs spread evenly over the 67 paradigms for the batched run, and the first ``--single-pairs``
of those for the one-at-a-time run. Both runs score the common pairs, and we report how closely they agree.

    python benchmarks/bench_blimp.py                     # CPU, 6,700 batched pairs vs 335 one at a time
    python benchmarks/bench_blimp.py --device cuda --pairs 67000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from babyllama.config import load_config
from babyllama.evaluate.blimp import encode, load_pairs, score_sequences
from babyllama.evaluate.formats import load_causal_lm
from babyllama.runtime import resolve_device

TARGET_SPEEDUP = 10.0
ROOT = Path(__file__).resolve().parents[1]


def demo_model_dir(tmp: Path, sentences: list[str]) -> tuple[Path, str]:
    """The trained demo student, or a random model of its size saved under ``tmp``."""
    from babyllama.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_tokenizer, train_tokenizer
    from babyllama.models import build_model, count_parameters

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    trained = ROOT / cfg.model_dir(cfg.student.name)
    if (trained / "config.json").is_file():
        return trained, f"trained demo student {trained}"
    tok = train_tokenizer((sentences[i : i + 4096] for i in range(0, len(sentences), 4096)),
                          cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, progress=False)
    folder = tmp / "student"
    save_tokenizer(tok, folder / "tok", cfg.student.max_position_embeddings)
    torch.manual_seed(0)
    model = build_model(cfg.student, tok.get_vocab_size(), {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID})
    model.save_pretrained(folder)
    for f in (folder / "tok").iterdir():
        f.rename(folder / f.name)
    return folder, (f"random LLaMA of the demo student's size ({count_parameters(model) / 1e6:.2f}M parameters, "
                    f"vocab {tok.get_vocab_size()})")


def spread(pairs: list, n: int) -> list:
    """The first n/67 pairs of every paradigm, so every paradigm (and sentence length) is represented."""
    by_paradigm: dict[str, list] = {}
    for p in pairs:
        by_paradigm.setdefault(p.paradigm, []).append(p)
    per = max(1, n // len(by_paradigm))
    return [p for group in by_paradigm.values() for p in group[:per]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "blimp"))
    ap.add_argument("--pairs", type=int, default=6700, help="pairs for the batched run")
    ap.add_argument("--single-pairs", type=int, default=335, help="pairs for the one-at-a-time run")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    all_pairs, _ = load_pairs(args.data)
    pairs = spread(all_pairs, args.pairs)
    single_pairs = spread(pairs, args.single_pairs)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, what = demo_model_dir(Path(tmp), [s for p in all_pairs for s in (p.good, p.bad)])
        device = resolve_device(args.device)
        model, tok = load_causal_lm(model_dir, device)
    eos = tok.eos_token_id
    print(f"model: {what}; device {device}, torch threads {torch.get_num_threads()}")

    def run_batched(ps: list) -> list[float]:
        seqs = encode(tok, [p.good for p in ps] + [p.bad for p in ps], leading_space=True)
        return score_sequences(model, seqs, prefix_id=eos, batch_size=args.batch_size)

    def run_single(ps: list) -> list[float]:
        seqs = encode(tok, [p.good for p in ps] + [p.bad for p in ps], leading_space=True)
        return [score_sequences(model, [s], prefix_id=eos, batch_size=1)[0] for s in seqs]

    run_batched(pairs[:64])  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    batched_scores = run_batched(pairs)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single_scores = run_single(single_pairs)
    t_single = time.perf_counter() - t0

    rate_b, rate_s = len(pairs) / t_batched, len(single_pairs) / t_single
    print("| mode | pairs | seconds | pairs/s |")
    print("|---|---:|---:|---:|")
    print(f"| one sentence per forward pass (BabyLM 2023 pipeline, reference) | {len(single_pairs)} | {t_single:.2f} "
          f"| {rate_s:.1f} |")
    print(f"| batched, batch {args.batch_size}, sorted by length (ours) | {len(pairs)} | {t_batched:.2f} | {rate_b:.1f} |")
    speedup = rate_b / rate_s
    print(f"speed-up: {speedup:.1f}x (target >= {TARGET_SPEEDUP:.0f}x): {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}")

    # Agreement on the common pairs: the batched run scored them inside padded batches.
    index = {id(p): i for i, p in enumerate(pairs)}
    n = len(pairs)
    common = [(batched_scores[index[id(p)]], batched_scores[n + index[id(p)]]) for p in single_pairs]
    m = len(single_pairs)
    single = list(zip(single_scores[:m], single_scores[m:], strict=True))
    diffs = [abs(a - b) for (ga, ba), (gb, bb) in zip(common, single, strict=True) for a, b in ((ga, gb), (ba, bb))]
    exact = sum(d == 0.0 for d in diffs)
    same_decision = sum((ga > ba) == (gb > bb) and (ga == ba) == (gb == bb)
                        for (ga, ba), (gb, bb) in zip(common, single, strict=True))
    print(f"agreement on {m} common pairs: bit-identical scores {exact}/{len(diffs)}, max |diff| {max(diffs):.2e} nats, "
          f"same decision {same_decision}/{m}")
    acc = sum(g > b for g, b in zip(batched_scores[:n], batched_scores[n:], strict=True)) / n
    print(f"(accuracy of this model on the {n} batched pairs: {100 * acc:.1f}%)")


if __name__ == "__main__":
    main()
