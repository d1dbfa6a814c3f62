"""Benchmark BLiMP scoring: batched (ours) against one sentence per forward pass (the BabyLM 2023 pipeline).

Model: the demo student (configs/demo.yaml) if it has been trained (``runs/demo/models/baby-llama-demo``),
else a randomly initialised LLaMA of the same size with a BPE tokenizer of the demo's vocabulary size,
trained here in seconds on the BLiMP sentences themselves (scores are meaningless then; speed and
agreement are what we measure). Data: the real BLiMP (../shared/data/blimp beside the repository, or --data), the first
``--pairs`` pairs spread evenly over the 67 paradigms for the batched run, and the first ``--single-pairs``
of those for the one-at-a-time run. Both runs score the common pairs, and we report how closely they agree.

    python benchmarks/bench_blimp.py                     # CPU, 6,700 batched pairs vs 335 one at a time
    python benchmarks/bench_blimp.py --device cuda --pairs 67000
    python benchmarks/bench_blimp.py --four --data PATH  # the demo's four models in one call, as `babyllama run`

``--four``: the demo's four models (its two teachers, the student and the control; trained ones when the
demo has run, else random ones of their sizes sharing one tokenizer). First each model alone on ``--pairs``
pairs, the previous scorer (one sentence per row) beside ours (both sentences of a pair in one row,
`evaluate/packed.py`), with their agreement; then every pair under ``--data`` through
``evaluate_blimp_models`` (the evaluate stage's path: one read and one tokenization for all four), timed
whole, with the fixed costs (reading, tokenizing, loading) and the load average.
"""

from __future__ import annotations

import argparse
import os
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


def four_model_dirs(tmp: Path, sentences: list[str]) -> tuple[list[Path], str]:
    """The demo's trained teachers, student and control, or random models of their sizes (one tokenizer)."""
    from babyllama.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, save_tokenizer, train_tokenizer
    from babyllama.models import build_model

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    specs = [*cfg.teachers, cfg.student, cfg.student]
    names = [m.name for m in cfg.teachers] + [cfg.student.name, cfg.control_name]
    trained = [ROOT / cfg.model_dir(n) for n in names]
    if all((d / "config.json").is_file() for d in trained):
        return trained, "the trained demo models"
    tok = train_tokenizer((sentences[i : i + 4096] for i in range(0, len(sentences), 4096)),
                          cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency, progress=False)
    save_tokenizer(tok, tmp / "tok", cfg.student.max_position_embeddings)
    dirs = []
    for i, (name, spec) in enumerate(zip(names, specs, strict=True)):
        torch.manual_seed(i)
        folder = tmp / name
        build_model(spec, tok.get_vocab_size(), {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID}).save_pretrained(folder)
        for f in (tmp / "tok").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        dirs.append(folder)
    return dirs, "random models of the demo's four sizes, one tokenizer"


def run_four(data: str, pairs: list, n_subset: int, t_read: float) -> None:
    """The four demo models: each alone on a subset (the previous scorer, one sentence per row, against the
    packed one), the four side by side against one after another on that subset, then the whole
    `evaluate_blimp_models` call (the evaluate stage's path) on every pair, with its fixed costs."""
    from babyllama.evaluate.blimp import evaluate_blimp_models

    subset = spread(pairs, n_subset)
    with tempfile.TemporaryDirectory() as tmp:
        dirs, what = four_model_dirs(Path(tmp), [s for p in pairs for s in (p.good, p.bad)])
        threads = torch.get_num_threads()
        print(f"models: {what}; torch threads {threads}; {os.cpu_count()} CPUs; load average "
              f"{os.getloadavg()[0]:.1f} at start")
        t0 = time.perf_counter()
        models = [load_causal_lm(d, torch.device("cpu")) for d in dirs]
        t_models = time.perf_counter() - t0
        t0 = time.perf_counter()
        encode(models[0][1], [p.good for p in pairs] + [p.bad for p in pairs], leading_space=True)
        t_encode = time.perf_counter() - t0
        print(f"fixed costs: reading {len(pairs):,} pairs {t_read:.1f} s, tokenizing them once for all four "
              f"{t_encode:.1f} s, loading the four models {t_models:.1f} s")
        compare_alone(dirs, models, subset)
        t0 = time.perf_counter()
        rows = []
        for d, result in zip(dirs, evaluate_blimp_models(dirs, data, device="cpu"), strict=True):
            rows.append(f"{d.name} after {time.perf_counter() - t0:.1f} s ({result['n_pairs']:,} pairs)")
        total = time.perf_counter() - t0
    n = len(pairs)
    print(f"evaluate_blimp_models, the four models on all {n:,} pairs (reading, tokenizing, loading and scoring; "
          f"results arrive in order: {', '.join(rows)}): {total:.1f} s, {4 * n / total:,.0f} model-pairs/s; "
          f"scaled to 67,000 pairs {67000 / n * total:.0f} s (target <= 120 s on 2 cores): "
          f"{'met' if 67000 / n * total <= 120 else 'NOT met'}; load average {os.getloadavg()[0]:.1f} at end")


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare_alone(dirs: list[Path], models: list, pairs: list) -> None:
    """Each model alone with all torch threads on ``pairs``: one sentence per row (the previous scorer) and
    both sentences of a pair in one row with the fused GELU (ours, as `evaluate_blimp_models` scores them)."""
    from babyllama.evaluate import packed
    from babyllama.evaluate.blimp import _input

    n, tok = len(pairs), models[0][1]
    seqs = encode(tok, [p.good for p in pairs] + [p.bad for p in pairs], leading_space=True)
    inputs = [_input(s, None, tok.eos_token_id, 128) for s in seqs]
    batches = packed.plan(inputs[:n], inputs[n:], tokens_per_batch=32 * 64)
    print(f"\neach model alone, {n:,} pairs (the first {n // 67} of every paradigm), {torch.get_num_threads()} threads:")
    print("| model | one sentence per row, batch 64 (previous): pairs/s | both in one row (ours): pairs/s | ratio "
          "| max \\|diff\\| nats | decisions differing |")
    print("|---|---:|---:|---:|---:|---:|")
    for d, (model, _) in zip(dirs, models, strict=True):
        score_sequences(model, seqs[:64], prefix_id=tok.eos_token_id)  # warm-up
        t_old, old = _timed(lambda m=model: score_sequences(m, seqs, prefix_id=tok.eos_token_id, batch_size=64))
        fused = packed.fuse_gelu(model)
        packed.score_pairs(fused, batches[:2], "sum", n)  # warm-up
        t_new, (good, bad) = _timed(lambda m=fused: packed.score_pairs(m, batches, "sum", n))
        diff = max(abs(a - b) for a, b in zip(old, good + bad, strict=True))
        flips = [abs(og - ob) for g, b, og, ob in zip(good, bad, old[:n], old[n:], strict=True) if (g > b) != (og > ob)]
        margin = f" (the previous scorer's margin on them ≤ {max(flips):.1e} nats)" if flips else ""
        print(f"| {d.name} | {n / t_old:,.0f} | {n / t_new:,.0f} | {t_old / t_new:.2f} | {diff:.1e} | "
              f"{len(flips)} of {n:,}{margin} |")


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
    ap.add_argument("--four", action="store_true", help="the demo's four models on every pair under --data")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    all_pairs, _ = load_pairs(args.data)
    t_read = time.perf_counter() - t0
    if args.four:
        run_four(args.data, all_pairs, args.pairs, t_read)
        return
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
