"""Benchmark the GGUF export against llama.cpp itself: do llama.cpp's log-probs match the HF model's?

For each model: export f16 and q8_0 GGUF files (``babyllama export``), load them in llama.cpp through
llama-cpp-python, and on the same token ids compare with the Hugging Face model in fp32:

- next-token log-probs on real text: the first ``--windows`` dev windows of the model's run (its
  ``data/dev.bin``); reference: f16 max |difference| < 0.01 nats;
- BLiMP: ``--pairs`` pairs sampled (seeded) from the real BLiMP, sum-of-log-probs protocol with the ``</s>``
  prefix and a leading space; reference: q8_0 accuracy within 1 point of the unquantized HF model.

    python benchmarks/bench_export.py                                    # the demo student and teachers
    python benchmarks/bench_export.py --model runs/x/models/m --pairs 1000 --blimp ~/.cache/babyllama/blimp
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runs" / "demo" / "models"
F16_TARGET_NATS = 1e-2
Q8_TARGET_POINTS = 1.0


def dev_windows(model_dir: Path, n: int) -> list[list[int]]:
    from babyllama.data.tokens import load_tokens
    from babyllama.export.record import load_record

    rec = load_record(model_dir)
    if rec.run_dir is None:
        raise SystemExit(f"{model_dir}: not inside a run (no ../../config.yaml), so no dev text to compare on")
    seq = int((rec.run_config.get("data") or {}).get("seq_len", 128))
    tokens = np.asarray(load_tokens(rec.run_dir / "data", "dev"))
    return [tokens[i * seq:(i + 1) * seq].tolist() for i in range(min(n, len(tokens) // seq))]


def bench_model(model_dir: Path, pairs: list, n_windows: int, tmp: Path) -> dict:
    from babyllama.evaluate.formats import load_causal_lm, resolve_device
    from babyllama.export import export_model
    from babyllama.export.llama_cpp_check import blimp_agreement, logprob_gap, open_gguf

    model, tok = load_causal_lm(model_dir, resolve_device("cpu"))
    windows = dev_windows(model_dir, n_windows)
    n_ctx = max(len(w) for w in windows) + 1
    row: dict = {"model": model_dir.name, "windows": len(windows)}
    for quant in ("f16", "q8_0"):
        out = tmp / f"{model_dir.name}-{quant}"
        t0 = time.perf_counter()
        export_model(model_dir, out, "gguf", quant)
        row[f"{quant}_export_s"] = time.perf_counter() - t0
        path = out / f"{model_dir.name}-{quant}.gguf"
        row[f"{quant}_mb"] = path.stat().st_size / 1e6
        llm = open_gguf(path, n_ctx=max(n_ctx, 64))
        row[quant] = logprob_gap(model, llm, windows)
        if pairs:
            t0 = time.perf_counter()
            row[f"{quant}_blimp"] = blimp_agreement(model, tok, llm, pairs, prefix_id=tok.eos_token_id)
            row[f"{quant}_blimp_s"] = time.perf_counter() - t0
        del llm
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="model folder (repeatable; default: every demo model)")
    ap.add_argument("--blimp", default=str(ROOT.parent / "shared" / "data" / "blimp"), help="BLiMP folder")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from babyllama.evaluate.blimp import load_pairs

    models = [Path(m) for m in args.model] if args.model else sorted(p.parent for p in DEMO.glob("*/config.json"))
    if not models:
        raise SystemExit("no model: run `make demo` first or pass --model DIR")
    pairs = []
    if args.pairs and Path(args.blimp).exists():
        everything, _ = load_pairs(args.blimp)
        pairs = random.Random(args.seed).sample(everything, min(args.pairs, len(everything)))
    print(f"BLiMP: {len(pairs)} pairs sampled with seed {args.seed} from {args.blimp}")
    print("| model | GGUF | size MB | next-token max abs diff (nats) | full-vocab max abs diff | BLiMP HF % | BLiMP GGUF % | same decision % |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            row = bench_model(m, pairs, args.windows, Path(tmp))
            for quant in ("f16", "q8_0"):
                g, b = row[quant], row.get(f"{quant}_blimp")
                blimp = (f"{100 * b['hf_accuracy']:.1f} | {100 * b['gguf_accuracy']:.1f} | {100 * b['same_decision']:.1f}"
                         if b else "– | – | –")
                print(f"| {row['model']} | {quant} | {row[f'{quant}_mb']:.2f} | {g['next_token_max_abs_nats']:.2e} | "
                      f"{g['full_vocab_max_abs_nats']:.2e} | {blimp} |", flush=True)
            f16 = row["f16"]["next_token_max_abs_nats"]
            print(f"  {row['model']}: f16 next-token gap {f16:.2e} nats over {row['f16']['positions']} positions "
                  f"(reference < {F16_TARGET_NATS}: {'met' if f16 < F16_TARGET_NATS else 'NOT met'})")
            if b := row.get("q8_0_blimp"):
                gap = 100 * abs(b["gguf_accuracy"] - b["hf_accuracy"])
                print(f"  {row['model']}: q8_0 BLiMP {gap:.1f} points from unquantized (reference <= {Q8_TARGET_POINTS}: "
                      f"{'met' if gap <= Q8_TARGET_POINTS else 'NOT met'}); llama.cpp scoring "
                      f"{row['q8_0_blimp_s']:.1f} s for {2 * b['pairs']} sentences")


if __name__ == "__main__":
    main()
