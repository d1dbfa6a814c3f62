"""Training throughput: our loop against a plain Hugging Face eager step and the machine's matmul peak.

For each model (the paper's 58M LLaMA student at vocab 16000, batch 8 x 128, and the demo config's
models) we time, in one run:

* peak: the best fp32 ``torch.mm`` GFLOP/s of this machine (square 2048 matrices), the reference;
* plain HF: ``LlamaForCausalLM`` / ``GPT2LMHeadModel`` forward with labels + backward + ``AdamW.step``
  + ``zero_grad``, in a bare Python loop (no data loading, no clipping, no logging);
* ours: ``babyllama.train.loop.fit`` on a synthetic prepared data folder (token values do not change the
  speed), reading tokens/s from its own metrics.jsonl after a warm-up interval;
* with ``--fused``: ours with ``train.fused_loss`` (chunked linear + cross-entropy, no full logits);
* with ``--compile``: ours with ``train.compile`` (and compiled + fused when both flags are given).

Model FLOPs per token: 6 x N_matmul (forward + backward of every weight matrix, input embeddings and
positions excluded since they are lookups) + 12 x layers x hidden x seq_len (attention scores and values,
forward + backward, as in the PaLM paper's MFU). MFU = achieved FLOP/s / measured peak. Every figure is
the best of its repeats (fastest step, fastest matmul), the least disturbed reading on a shared machine.

    python benchmarks/bench_train.py            # a few minutes on 2 CPU cores
    python benchmarks/bench_train.py --quick    # fewer steps
    python benchmarks/bench_train.py --quick --fused --compile   # the fused loss and torch.compile too
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from babyllama.config import Config, ModelConfig, load_config
from babyllama.data.tokenizer import save_tokenizer, train_tokenizer
from babyllama.data.tokens import token_dtype, write_tokens
from babyllama.io import atomic_write_json
from babyllama.models import build_model, count_parameters
from babyllama.train.loop import fit
from babyllama.train.objective import LMObjective

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = {"pad": 0, "bos": 1, "eos": 2}


def matmul_peak(n: int = 2048, repeats: int = 6) -> float:
    """Best fp32 GFLOP/s of one n x n matmul on this machine (all torch threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_token(model: torch.nn.Module, m: ModelConfig, seq_len: int) -> float:
    n = count_parameters(model)
    emb = model.get_input_embeddings().weight
    if emb is not model.get_output_embeddings().weight:  # untied: the input table is a lookup, no matmul
        n -= emb.numel()
    if m.arch == "gpt2":
        n -= model.transformer.wpe.weight.numel()
    return 6 * n + 12 * m.num_layers * m.hidden_size * seq_len


def plain_hf(m: ModelConfig, vocab: int, batch: int, seq_len: int, steps: int, warmup: int, lr: float) -> float:
    """Tokens/s of the bare HF eager train step."""
    torch.manual_seed(0)
    model = build_model(m, vocab, SPECIAL)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    x = torch.randint(0, vocab, (batch, seq_len))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch * seq_len / min(times)


def synthetic_data(cfg: Config, vocab: int, n_tokens: int) -> None:
    """A prepared data folder with random tokens and a real (tiny) tokenizer, in prepare's format."""
    d = cfg.data_dir
    save_tokenizer(train_tokenizer([["a b c d e f g"]], 300, 1, progress=False), d / "tokenizer", cfg.data.seq_len)
    dtype = token_dtype(vocab)
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", n_tokens), ("dev", 64 * cfg.data.seq_len)):
        write_tokens(d / f"{split}.bin", rng.integers(3, vocab, size=n).astype(dtype))
        splits[split] = {"file": f"{split}.bin", "tokens": n, "words": n * 3 // 4}
    atomic_write_json(d / "manifest.json", {"dtype": dtype.name, "vocab_size": vocab, "special_tokens": SPECIAL,
                                            "tokenizer": "tokenizer", "data_hash": f"synthetic-{vocab}-{n_tokens}",
                                            "splits": splits})


def ours(m: ModelConfig, vocab: int, batch: int, seq_len: int, steps: int, warmup: int, lr: float, work: Path,
         compile: bool = False, fused: bool = False) -> float:
    """Tokens/s of babyllama's fit, from its metrics after the warm-up steps."""
    n_steps = warmup + steps
    train = m.train.model_copy(update={"batch_size": batch, "grad_accum": 1, "lr": lr, "max_steps": n_steps,
                                       "log_every": 1, "eval_windows": 8, "eval_every": 0, "save_every": 0,
                                       "compile": compile, "fused_loss": fused})
    cfg = Config.model_validate({"out_dir": str(work), "seed": 0, "data": {"seq_len": seq_len},
                                 "logging": {"progress": False},
                                 "teachers": [m.model_copy(update={"train": train}).model_dump(mode="json")]})
    synthetic_data(cfg, vocab, (batch * n_steps + 8) * seq_len)
    out = fit(cfg, cfg.teachers[0], LMObjective(fused))
    rates = [json.loads(x)["tokens_per_s"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return max(rates[warmup:])  # one line per step; the warm-up steps are dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    ap.add_argument("--only", default=None, help="comma-separated model names to run (default: all)")
    ap.add_argument("--compile", action="store_true", help="also time our loop with train.compile=true (compiles first)")
    ap.add_argument("--fused", action="store_true", help="also time our loop with train.fused_loss=true")
    args = ap.parse_args()
    budget = 2e11 if args.quick else 5e11  # model FLOPs timed per measurement: more steps for small models

    paper = load_config(ROOT / "configs" / "babylm-2023-strict-small.yaml")
    demo = load_config(ROOT / "configs" / "demo.yaml")
    cases = [(paper.student, 16000, 8, 128)] + [(m, demo.tokenizer.vocab_size, m.train.batch_size, demo.data.seq_len)
                                                for m in demo.teachers + [demo.student]]
    if args.only:
        cases = [c for c in cases if c[0].name in args.only.split(",")]
    variants = [v for v, on in ((("fused", False, True), args.fused), (("compiled", True, False), args.compile),
                                (("compiled+fused", True, True), args.fused and args.compile)) if on]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; figures are best-of-repeats")
    peaks = [matmul_peak()]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        for i, (m, vocab, batch, seq_len) in enumerate(cases):
            with torch.device("meta"):
                shape = build_model(m, vocab, SPECIAL)
            fpt = flops_per_token(shape, m, seq_len)
            steps = int(min(max(budget / (fpt * batch * seq_len), 2), 12))
            rates = [plain_hf(m, vocab, batch, seq_len, steps, 1, m.train.lr),
                     ours(m, vocab, batch, seq_len, steps, 1, m.train.lr, work / str(i))]
            for name, compile, fused in variants:
                rates.append(ours(m, vocab, batch, seq_len, steps, 2 if compile else 1, m.train.lr, work / f"{i}{name}",
                                  compile=compile, fused=fused))
            peaks.append(matmul_peak())
            rows.append((m, count_parameters(shape), f"{batch}x{seq_len}", fpt, rates))
            print(f"  measured {m.name} ({steps} timed steps)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    peak = max(peaks)
    print(f"fp32 matmul peak (2048^2 torch.mm), best of {len(peaks)} readings: {peak:.1f} GFLOP/s "
          f"(readings ranged {min(peaks):.1f}-{peak:.1f}: a wide range means the machine was busy)")
    names = ["plain HF", "ours"] + [v[0] for v in variants]
    widths = [max(10, len(n) + 6) for n in names]
    header = f"{'model':<20} {'params':>11} {'batch':>7}" + "".join(
        f" | {n + ' tok/s':>{w}} {'MFU':>5}" for n, w in zip(names, widths, strict=True)) + " | best/plain"
    print(header)
    print("-" * len(header))
    for m, n_params, shape_txt, fpt, rates in rows:
        cells = "".join(f" | {r:>{w},.0f} {r * fpt / 1e9 / peak:>5.0%}" for r, w in zip(rates, widths, strict=True))
        best = max(range(1, len(rates)), key=lambda j: rates[j])
        print(f"{m.name:<20} {n_params:>11,} {shape_txt:>7}{cells} | {rates[best] / rates[0]:>5.2f} ({names[best]})")


if __name__ == "__main__":
    main()
