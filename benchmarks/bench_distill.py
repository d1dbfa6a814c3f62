"""Distillation speed, memory and the cache's approximation: live teachers vs the teacher-logit cache.

In one run, for two settings:

* demo: the demo config's models (configs/demo.yaml: LLaMA and GPT-2 teachers 256 x 4, a LLaMA
  student 128 x 2) on a 15k-word slice of its corpus;
* paper-small: the paper's models scaled down to fit the CPU, widths / 4 and depths / 2 (GPT-2
  384 x 12, LLaMA 256 x 12 with FFN 768, student 128 x 8 with FFN 256 = 3.4M params), which keeps
  the teachers' forward at ~5x the student's training FLOPs (the paper's models: ~6x; this ratio is
  what bounds the cache's gain), vocab 8000 and batch 32 x 128 as in the issue's measurement, on a
  synthetic Zipfian corpus (speed does not depend on the text, the vocabulary size does);

it runs `babyllama.distill.run.distill` end to end for 3 epochs with live teachers and with the cache
(cache build included), and reports time, tokens per second, the student's dev CE and peak memory side
by side. It also times one training step of the 2.9M student (forward + loss + backward, teachers'
logits precomputed) with: naive KL (softmax, log, multiply, sum under autograd), the reference code's
KLDivLoss(batchmean) on log_softmax / softmax, our chunked loss on live logits, and our loss on cached
top-32 rows. Last, the cache's approximation on held-out dev windows: KD from top-k rows (k = 8, 32,
128) against the exact KD, value and gradient direction.

The machine these run on is shared, so every measurement runs in its own process with ONE torch thread
and is timed in process CPU seconds (time.process_time), which other processes barely disturb; wall
seconds are shown too. Peak memory is that process's ru_maxrss.

    python benchmarks/bench_distill.py            # about 6 CPU-minutes
    python benchmarks/bench_distill.py --quick    # no live fixed-window run, fewer repeats

Reference figures (the issue, another machine and teachers): whole distillation of a 2.9M student from
2 teachers, vocab 8000, batch 32 x 128: fused KLDivLoss 1,350 tok/s, naive KL 918 tok/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {"fused": 1350.0, "naive": 918.0}
TEMPERATURE, ALPHA, TOP_K = 2.0, 0.5, 32


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- settings ------------------------------------------------------------------------------------------


def _model(name: str, arch: str, hidden: int, layers: int, heads: int, ffn: int | None, train: dict) -> dict:
    m = {"name": name, "arch": arch, "hidden_size": hidden, "num_layers": layers, "num_heads": heads,
         "max_position_embeddings": 128, "train": train}
    if ffn:
        m["intermediate_size"] = ffn
    return m


def synthetic_corpus(folder: Path, n_words: int, seed: int = 0, lexicon: int = 60000) -> Path:
    """Zipfian sentences over random multi-syllable words: enough distinct pairs for an ~8000-token BPE
    from a few thousand words (speed does not depend on the text, the vocabulary size does)."""
    rng = random.Random(seed)
    onsets = list("bcdfghjklmnprstvwz") + ["br", "tr", "st", "pl", "gr", "sh", "ch", "th"]
    syllables = [c + v + t for c in onsets for v in ["a", "e", "i", "o", "u", "ai", "ou"] for t in ["", "n", "r", "s"]]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 5))) for _ in range(lexicon)})
    rng.shuffle(words)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(words))]
    lines, count = [], 0
    while count < n_words:
        k = rng.randint(5, 15)
        lines.append(" ".join(rng.choices(words, weights, k=k)).capitalize() + ".")
        count += k
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "synthetic.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def setting(name: str, work: Path) -> dict:
    """The config tree of one benchmark setting (the student distils for 3 epochs)."""
    student_train = {"lr": 2e-3, "batch_size": 16, "epochs": 3, "warmup_steps": 10, "weight_decay": 0.1,
                     "eval_windows": 64, "log_every": 2}
    if name == "demo":
        teacher_train = {"lr": 2e-3, "batch_size": 16, "epochs": 2, "warmup_steps": 3, "eval_windows": 32,
                         "log_every": 10}
        return {
            "out_dir": str(work / "demo"), "seed": 1337,
            "data": {"corpus": "embedded:kjv", "max_words": 15000, "dev": "split", "dev_fraction": 0.05,
                     "seq_len": 128},
            "tokenizer": {"vocab_size": 4000, "min_frequency": 2},
            "teachers": [_model("llama-teacher", "llama", 256, 4, 4, 688, teacher_train),
                         _model("gpt2-teacher", "gpt2", 256, 4, 4, None, teacher_train)],
            "student": _model("baby-llama-demo", "llama", 128, 2, 4, 344, student_train),
            "distill": {"alpha": ALPHA, "temperature": TEMPERATURE, "cache": {"enabled": False, "mode": "top_k", "top_k": TOP_K}},
            "logging": {"progress": False},
        }
    corpus = synthetic_corpus(work / "paper-small-corpus", 5000)
    teacher_train = {"lr": 1e-3, "batch_size": 32, "max_steps": 2, "eval_windows": 8}
    return {
        "out_dir": str(work / "paper-small"), "seed": 1337,
        "data": {"corpus": str(corpus), "format": "text", "dev": "split", "dev_fraction": 0.1, "seq_len": 128},
        "tokenizer": {"vocab_size": 8000, "min_frequency": 1},
        "teachers": [_model("gpt2-705M-small", "gpt2", 384, 12, 6, None, teacher_train),
                     _model("llama-360M-small", "llama", 256, 12, 4, 768, teacher_train)],
        "student": _model("baby-llama-58M-small", "llama", 128, 8, 2, 256, {**student_train, "batch_size": 32}),
        "distill": {"alpha": ALPHA, "temperature": TEMPERATURE, "cache": {"enabled": False, "mode": "top_k", "top_k": TOP_K}},
        "logging": {"progress": False},
    }


# -- workers (each runs in a fresh process: its ru_maxrss is its own peak) ------------------------------


def worker_prepare(tree: dict) -> dict:
    from babyllama.config import Config
    from babyllama.data.prepare import prepare
    from babyllama.training import train_model

    cfg = Config.model_validate(tree)
    manifest = prepare(cfg)
    t = time.perf_counter()
    for teacher in cfg.teachers:
        train_model(cfg, teacher.name)
    return {"vocab": manifest["vocab_size"], "train_tokens": manifest["splits"]["train"]["tokens"],
            "teacher_s": time.perf_counter() - t}


def worker_distill(tree: dict, mode: str) -> dict:
    """mode: live (the student's windows: random), live-fixed, or cached (cache build timed separately)."""
    import torch

    from babyllama.config import Config
    from babyllama.distill.run import build_teacher_cache
    from babyllama.training import distill

    cfg = Config.model_validate(tree)
    cfg.out_dir = str(Path(cfg.out_dir) / f"run-{mode}")
    src = Path(tree["out_dir"])
    shutil.copytree(src / "data", cfg.data_dir)
    for t in cfg.teachers:
        shutil.copytree(src / "models" / t.name, cfg.model_dir(t.name))
    if mode == "live-fixed":
        cfg.student.train.windows = "fixed"
    cfg.distill.cache.enabled = mode == "cached"
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    build_s = build_cpu = 0.0
    if mode == "cached":
        build_teacher_cache(cfg)
        build_s, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = distill(cfg)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    summary = json.loads((out / "training_summary.json").read_text())
    return {"wall_s": wall, "cpu_s": cpu, "build_s": build_s, "build_cpu_s": build_cpu,
            "dev_ce": summary["best_dev_loss"], "steps": summary["steps"], "tokens": summary["tokens_seen"],
            "peak_rss_mb": _rss_mb(), "base_rss_mb": base, "threads": torch.get_num_threads()}


def worker_loss(vocab: int, batch: int, variant: str, repeats: int) -> dict:
    """Tokens/s of student forward + loss + backward with precomputed teacher logits."""
    import torch
    import torch.nn.functional as F

    from babyllama.config import ModelConfig
    from babyllama.distill import distillation_loss
    from babyllama.distill.loss import SparseTeachers, combine, ensemble_log_probs
    from babyllama.models import build_model

    torch.manual_seed(0)
    seq = 128
    student = build_model(ModelConfig(name="s", arch="llama", hidden_size=128, num_layers=4, num_heads=2,
                                      intermediate_size=256, max_position_embeddings=seq), vocab,
                          {"pad": 0, "bos": 1, "eos": 2})
    x = torch.randint(3, vocab, (batch, seq))
    teachers = [torch.randn(batch, seq, vocab) * 3, torch.randn(batch, seq, vocab) * 2]
    sparse = None
    if variant == "ours-cache":
        lp = ensemble_log_probs([z.reshape(-1, vocab) for z in teachers], TEMPERATURE, "logit_mean", [0.5, 0.5])
        top = lp.topk(TOP_K, dim=-1)
        tail = lp.scatter(-1, top.indices, -torch.inf).logsumexp(-1)
        sparse = (top.indices.to(torch.int32), top.values.half(), tail)
        del lp, top, tail
    del_teachers = variant == "ours-cache"
    if del_teachers:
        teachers = []
    t = TEMPERATURE

    def step() -> None:
        logits = student(input_ids=x, use_cache=False).logits
        if variant == "naive":
            ens = torch.stack(teachers).mean(0)
            p, q = torch.softmax(ens / t, -1), torch.softmax(logits / t, -1)
            kd = (p * (torch.log(p) - torch.log(q))).sum(-1).mean() * t**2
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
            loss = ALPHA * ce + (1 - ALPHA) * kd
        elif variant == "fused":  # the reference code: KLDivLoss(batchmean) on log_softmax / softmax
            ens = torch.stack(teachers).mean(0)
            kd = torch.nn.KLDivLoss(reduction="batchmean")(F.log_softmax(logits / t, -1), F.softmax(ens / t, -1)) * t**2
            ce = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
            loss = ALPHA * ce + (1 - ALPHA) * kd
        elif variant == "ours-live":
            loss, _ = distillation_loss(logits, teachers, x, alpha=ALPHA, temperature=t)
        else:
            ids, values, tail = sparse
            src = SparseTeachers.from_top_k(ids.reshape(-1, TOP_K), values.reshape(-1, TOP_K), tail.reshape(-1))
            loss, _ = combine(logits, src, x, alpha=ALPHA, temperature=t)
        loss.backward()
        student.zero_grad(set_to_none=True)

    step()
    base = _rss_mb()
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        step()
        times.append(time.process_time() - c0)
    return {"tok_s": batch * seq / min(times), "peak_rss_mb": _rss_mb(), "base_rss_mb": base}


def worker_approx(tree: dict) -> dict:
    """Cached (top-k + tail) KD against the exact KD on held-out dev windows, for the distilled student."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from babyllama.config import Config
    from babyllama.data.tokens import load_tokens, read_manifest
    from babyllama.data.windows import gather_windows, window_starts
    from babyllama.distill.cache import CacheSpec, ensure_cache
    from babyllama.distill.loss import DenseTeachers, SparseTeachers, combine
    from babyllama.distill.teachers import TeacherEnsemble, teacher_dirs

    cfg = Config.model_validate(tree)
    src = Path(tree["out_dir"])
    cfg.out_dir = str(src / "run-cached")
    manifest = read_manifest(cfg.data_dir)
    seq, n = cfg.data.seq_len, 32
    dev = np.asarray(load_tokens(cfg.data_dir, "dev")[: n * seq])
    x = torch.from_numpy(gather_windows(dev, window_starts(np.arange(n), seq), seq))
    ens = TeacherEnsemble.load(teacher_dirs(cfg), torch.device("cpu"), torch.float32)
    student = AutoModelForCausalLM.from_pretrained(str(cfg.model_dir(cfg.student.name)))
    logits = student(input_ids=x, use_cache=False).logits.detach()
    teacher_logits = ens(x)
    vocab = logits.shape[-1]
    out: dict = {"windows": n, "vocab": vocab, "rows": []}
    cases = [(TEMPERATURE, k, ["forward_kl", "reverse_kl", "js"]) for k in (8, 32, 128)] + [(1.0, 32, ["forward_kl"])]
    for temperature, k, divergences in cases:
        spec = CacheSpec(teachers=(("a", "dev"), ("b", "dev")), data_hash="dev-" + manifest["data_hash"],
                         seq_len=seq, n_windows=n, vocab_size=vocab, ensemble="logit_mean", weights=(0.5, 0.5),
                         temperature=temperature, top_k=k)
        cache = ensure_cache(src / "approx-cache", spec, dev, lambda: ens, device=torch.device("cpu"),
                             batch_size=16, log=lambda _m: None)
        ids, values, tail = cache.rows(np.arange(n))
        sparse = SparseTeachers.from_top_k(ids.reshape(-1, spec.k), values.reshape(-1, spec.k),
                                           None if tail is None else tail.reshape(-1))
        dense = DenseTeachers([z.reshape(-1, vocab) for z in teacher_logits], temperature, "logit_mean", [0.5, 0.5])
        for divergence in divergences:
            s = logits.clone().requires_grad_(True)
            exact, _ = combine(s, dense, x, alpha=0.0, temperature=temperature, divergence=divergence)
            (g_exact,) = torch.autograd.grad(exact, s)
            approx, _ = combine(s, sparse, x, alpha=0.0, temperature=temperature, divergence=divergence)
            (g_approx,) = torch.autograd.grad(approx, s)
            cos = torch.nn.functional.cosine_similarity(g_exact.flatten(), g_approx.flatten(), dim=0).item()
            mass = 1 - tail.exp().mean().item() if tail is not None else 1.0
            out["rows"].append({"divergence": divergence, "k": k, "T": temperature, "exact": exact.item(),
                                "cached": approx.item(), "grad_cos": cos, "topk_mass": mass})
    return out


# -- driver --------------------------------------------------------------------------------------------


def run_worker(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"worker {args[:2]} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_as_worker(argv: list[str]) -> dict:
    """One measurement in this (1-thread) process, for the parent's run_worker."""
    import torch

    torch.set_num_threads(1)
    kind, rest = argv[0], argv[1:]
    if kind == "prepare":
        return worker_prepare(json.loads(rest[0]))
    if kind == "distill":
        return worker_distill(json.loads(rest[0]), rest[1])
    if kind == "loss":
        return worker_loss(int(rest[0]), int(rest[1]), rest[2], int(rest[3]))
    return worker_approx(json.loads(rest[0]))


def loss_section(quick: bool) -> None:
    """One training step of the student, by loss implementation."""
    repeats = 2 if quick else 3
    print(f"\n== one student step (LLaMA 128 x 4: forward + CE/KD loss + backward), teachers' logits precomputed, "
          f"T={TEMPERATURE}, alpha={ALPHA}; tokens per CPU-second, best of {repeats}")
    print(f"{'vocab':>6} {'batch':>7} {'loss':<11} {'tok/CPU-s':>9} {'vs naive':>8} {'peak RSS MB':>12} "
          f"{'of which step':>14}")
    for vocab, batch in [(4000, 16), (8000, 32)]:
        naive = None
        for variant in ["naive", "fused", "ours-live", "ours-cache"]:
            r = run_worker("loss", str(vocab), str(batch), variant, str(repeats))
            naive = naive or r["tok_s"]
            print(f"{vocab:>6} {batch:>4}x128 {variant:<11} {r['tok_s']:>9,.0f} {r['tok_s'] / naive:>7.2f}x "
                  f"{r['peak_rss_mb']:>12,.0f} {r['peak_rss_mb'] - r['base_rss_mb']:>14,.0f}", flush=True)
    print("(naive/fused: the reference recipe, torch.stack(teachers).mean(0) then a (B, L, V) KL under autograd; "
          "'of which step': RSS growth during the timed steps, beyond model and logits)")


def end_to_end(name: str, work: Path, quick: bool) -> tuple[str, dict, dict]:
    """Distill 3 epochs with live teachers and with the cache: CPU time, dev CE, memory."""
    tree = setting(name, work)
    prep = run_worker("prepare", json.dumps(tree))
    print(f"\n== {name}: distill 3 epochs, vocab {prep['vocab']}, {prep['train_tokens']:,} train tokens "
          f"(teachers trained in {prep['teacher_s']:.0f} s, not counted)")
    print(f"{'run':<11} {'CPU s':>7} {'(cache build)':>13} {'wall s':>7} {'tok/CPU-s':>9} {'dev CE':>7} "
          f"{'peak RSS MB':>12}")
    modes = ["live", "cached"] if quick or name != "demo" else ["live", "live-fixed", "cached"]
    res = {}
    for mode in modes:
        r = res[mode] = run_worker("distill", json.dumps(tree), mode)
        print(f"{mode:<11} {r['cpu_s']:>7.1f} {r['build_cpu_s']:>13.1f} {r['wall_s']:>7.1f} "
              f"{r['tokens'] / r['cpu_s']:>9,.0f} {r['dev_ce']:>7.3f} {r['peak_rss_mb']:>12,.0f}", flush=True)
    live, cached = res["live"], res["cached"]
    print(f"cached vs live, 3 epochs including the cache build: {live['cpu_s'] / cached['cpu_s']:.2f}x less CPU "
          f"time (wall {live['wall_s'] / cached['wall_s']:.2f}x; target >= 2x); the training alone "
          f"{live['cpu_s'] / (cached['cpu_s'] - cached['build_cpu_s']):.2f}x; dev CE "
          f"{cached['dev_ce'] / live['dev_ce'] - 1:+.2%} (target within 1%)")
    per_epoch = (live["cpu_s"] / 3, (cached["cpu_s"] - cached["build_cpu_s"]) / 3)
    print(f"projected from these runs for the paper's 6 epochs: "
          f"{6 * per_epoch[0] / (cached['build_cpu_s'] + 6 * per_epoch[1]):.2f}x less CPU time with the cache")
    if "live-fixed" in res:
        print(f"cached vs live on the same fixed windows: dev CE "
              f"{cached['dev_ce'] / res['live-fixed']['dev_ce'] - 1:+.2%}")
    if name == "paper-small":
        print(f"whole distillation with live teachers, 1 thread: ours {live['tokens'] / live['cpu_s']:,.0f} tok/CPU-s; "
              f"the issue's {REFERENCE['fused']:,.0f} (fused) / {REFERENCE['naive']:,.0f} (naive) tok/s were "
              f"measured on another machine with other teachers")
    return name, tree, res


def approx_section(tree: dict) -> None:
    """The cache's approximation against exact KD on held-out windows."""
    r = run_worker("approx", json.dumps(tree))
    print(f"\n== cached (top-k + tail bucket) vs exact KD on {r['windows']} held-out dev windows "
          f"(the demo teachers and the cache-distilled student; KD = T^2 x token-mean divergence)")
    print(f"{'divergence':<11} {'T':>3} {'k':>4} {'top-k mass':>10} {'exact KD':>9} {'cached KD':>9} "
          f"{'rel. diff':>9} {'grad cosine':>11}")
    for row in r["rows"]:
        rel = row["cached"] / row["exact"] - 1
        print(f"{row['divergence']:<11} {row['T']:>3g} {row['k']:>4} {row['topk_mass']:>10.3f} {row['exact']:>9.4f} "
              f"{row['cached']:>9.4f} {rel:>+9.2%} {row['grad_cos']:>11.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the live fixed-window run; fewer loss repeats")
    ap.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one, removed)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(run_as_worker(args.worker)))
        return

    t_all = time.perf_counter()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_distill_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start "
          f"(shared with other engineers: each measurement runs in its own 1-thread process, timed in CPU seconds)")
    try:
        loss_section(args.quick)

        summary = [end_to_end(name, work, args.quick) for name in ["demo", "paper-small"]]
        approx_section(summary[0][1])
        print(f"\ntotal benchmark time {time.perf_counter() - t_all:.0f} s, load average {os.getloadavg()[0]:.1f} at end")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
