"""babyllama's zero-shot scores under `eval.protocol: babylm-2024` against lm-evaluation-harness, in one run.

The BabyLM 2024 pipeline is lm-eval: a BLiMP pair is two `loglikelihood` requests with an empty
context and the continuation " " + sentence (the empty context becomes the tokenizer's BOS), and the
first argmax wins. This script scores a BLiMP sample and a supplement sample both ways with the same
model and prints the largest per-sentence difference in nats and the accuracy difference (target:
< 1e-4 nats and identical decisions).

lm-eval is not a babyllama dependency; install it next to babyllama to run this (lm_eval==0.4.13 is the
version checked): ``pip install -e '.[lmeval]'``. Without it the script says so and exits 0.

    python benchmarks/bench_lmeval.py [--model runs/demo/models/baby-llama-demo] [--per-paradigm 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from babyllama.evaluate.blimp import encode, load_pairs, prefix_token_id, score_sequences
from babyllama.evaluate.formats import load_causal_lm

ROOT = Path(__file__).resolve().parents[1]


def sample(data: str, per_paradigm: int) -> list:
    pairs, _ = load_pairs(data)
    kept, seen = [], {}
    for p in pairs:
        seen[p.paradigm] = seen.get(p.paradigm, 0) + 1
        if seen[p.paradigm] <= per_paradigm:
            kept.append(p)
    return kept


def ours(model_dir: str, sentences: list[str], batch_size: int) -> list[float]:
    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    pid = prefix_token_id(tok, model.config, "bos", model_dir)  # what babylm-2024 sets
    return score_sequences(model, encode(tok, sentences, leading_space=True), prefix_id=pid, batch_size=batch_size)


def lm_eval_scores(model_dir: str, sentences: list[str], batch_size: int) -> list[float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model_dir, device="cpu", batch_size=batch_size, dtype="float32")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=("", " " + s), idx=0) for s in sentences]
    return [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def compare(name: str, pairs: list, a: list[float], b: list[float]) -> tuple[float, float, int]:
    n = len(pairs)
    diff = max(abs(x - y) for x, y in zip(a, b, strict=True))
    acc_a = sum(a[i] >= a[n + i] for i in range(n)) / n  # first argmax: a tie counts as correct
    acc_b = sum(b[i] >= b[n + i] for i in range(n)) / n
    flips = sum((a[i] >= a[n + i]) != (b[i] >= b[n + i]) for i in range(n))
    print(f"| {name} | {n} | {diff:.2e} | {100 * acc_a:.2f} | {100 * acc_b:.2f} | {100 * (acc_a - acc_b):+.2f} | {flips} |")
    return diff, acc_a - acc_b, flips


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs/demo/models/baby-llama-demo"), help="HF causal-LM folder")
    ap.add_argument("--blimp", default="embedded:blimp", help="BLiMP data (default: the embedded subset)")
    ap.add_argument("--supplement", default=str(ROOT / "tests/fixtures/eval/supplement"), help="supplement data")
    ap.add_argument("--per-paradigm", type=int, default=10, help="pairs per paradigm / supplement file")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    try:
        import lm_eval
    except ImportError:
        print("lm_eval is not installed (pip install lm_eval==0.4.13): nothing to compare")
        return 0
    if not (Path(args.model) / "config.json").exists():
        print(f"{args.model}: no model there; run `make demo` first or pass --model DIR (nothing compared)")
        return 0
    print(f"model {args.model}; lm_eval {lm_eval.__version__}; protocol babylm-2024 (BOS prefix, leading space, ties correct)")
    print("| data | pairs | max abs diff (nats) | ours acc % | lm-eval acc % | difference | decisions that differ |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for name, data in (("BLiMP", args.blimp), ("supplement", args.supplement)):
        pairs = sample(data, args.per_paradigm)
        sentences = [p.good for p in pairs] + [p.bad for p in pairs]
        a = ours(args.model, sentences, args.batch_size)
        b = lm_eval_scores(args.model, sentences, args.batch_size)
        diff, _, _ = compare(name, pairs, a, b)
        worst = max(worst, diff)
    print(f"max per-item difference {worst:.2e} nats (target < 1e-4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
