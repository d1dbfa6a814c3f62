"""How much of distillation's gain each teacher-cache mode keeps, and what it saves, in one run.

On the demo config (configs/demo.yaml: LLaMA + GPT-2 teachers, a 0.36M LLaMA student), every student
distils for 3 epochs on the fixed windows, and so does its control (one data stream for the pair):

* gain retention = (control - cached student) / (control - live student), dev CE over all dev windows,
  for the `sample` cache (64 draws per position, unbiased) and the `top_k` cache (k = 64), at T = 1
  and T = 2, per student seed (``student.train.seed``; teachers, data and caches are shared);
* CPU seconds of the 3-epoch distillation: live teachers (the reference) beside each cache, its build
  included, and the dev CE each reached.

Targets (issue 9): retention >= 0.95 at T = 1 and >= 0.9 at T = 2; cached >= 2x less CPU than live at
equal dev CE (+-0.5%). Everything runs in this process with one torch thread and is timed in process CPU
seconds (time.process_time), which other processes on a shared machine barely disturb.

    python benchmarks/bench_cache_retention.py            # demo corpus (300k words), 3 seeds
    python benchmarks/bench_cache_retention.py --quick    # 50k words, 1 seed, dev CE on 160 dev windows
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV_WINDOWS: int | None = None  # all dev windows; 160 in quick mode
MODES = {"live": [], "sample": ["distill.cache.mode=sample", "distill.cache.samples=64"],
         "top_k": ["distill.cache.mode=top_k", "distill.cache.top_k=64"]}


def _config(out: Path, quick: bool, extra: list[str]):
    from babyllama.config import load_config

    base = [f"out_dir={out}", "logging.progress=false", "student.train.epochs=3", "student.train.windows=fixed",
            "student.train.eval_every=0"]
    if quick:
        base += ["data.max_words=50000"]
    return load_config(ROOT / "configs" / "demo.yaml", base + extra)


def _dev_ce(cfg, name: str) -> float:
    from babyllama.evaluate.perplexity import evaluate_perplexity

    result = evaluate_perplexity(cfg.model_dir(name), cfg.data_dir, seq_len=cfg.data.seq_len, max_windows=DEV_WINDOWS)
    return float(result["ce_nats_per_token"])


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(out: Path, quick: bool, seeds: list[int], temperatures: list[float]) -> dict:
    from babyllama.data.prepare import prepare
    from babyllama.distill.run import build_teacher_cache
    from babyllama.training import distill, train_model

    cfg = _config(out, quick, [])
    prepare(cfg)
    teacher_s = _timed(lambda: [train_model(cfg, t.name) for t in cfg.teachers])
    results: dict = {"teachers": {t.name: _dev_ce(cfg, t.name) for t in cfg.teachers}, "teacher_cpu_s": teacher_s,
                     "runs": []}
    for seed in seeds:
        ctl = _config(out, quick, [f"student.name=s{seed}", f"student.train.seed={seed}"])
        ctl_s = _timed(lambda c=ctl: train_model(c, "control"))
        control = _dev_ce(ctl, ctl.control_name)
        for temp in temperatures:
            for mode, sets in MODES.items():
                name = f"s{seed}-T{temp:g}-{mode}"
                c = _config(out, quick, [f"student.name={name}", f"student.train.seed={seed}",
                                         f"distill.temperature={temp}", f"distill.cache.enabled={mode != 'live'}", *sets])
                build_s = _timed(lambda c=c: build_teacher_cache(c)) if mode != "live" else 0.0
                train_s = _timed(lambda c=c: distill(c))
                results["runs"].append({"seed": seed, "T": temp, "mode": mode, "control": control, "control_cpu_s": ctl_s,
                                        "dev_ce": _dev_ce(c, name), "build_cpu_s": build_s, "train_cpu_s": train_s})
                print(json.dumps(results["runs"][-1]), flush=True)
    return results


def report(results: dict) -> None:
    runs = results["runs"]
    print("\nteachers' dev CE:", ", ".join(f"{k} {v:.4f}" for k, v in results["teachers"].items()),
          f"({results['teacher_cpu_s']:.0f} CPU s)")
    print("\n| T | seed | control | live | sample-64 | top-64 | retention sample | retention top-k |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    retention: dict = {}
    for (seed, temp) in sorted({(r["seed"], r["T"]) for r in runs}):
        by = {r["mode"]: r for r in runs if r["seed"] == seed and r["T"] == temp}
        control, live = by["live"]["control"], by["live"]["dev_ce"]
        gain = control - live
        ret = {m: (control - by[m]["dev_ce"]) / gain if gain else float("nan") for m in ("sample", "top_k")}
        for m, v in ret.items():
            retention.setdefault((temp, m), []).append(v)
        print(f"| {temp:g} | {seed} | {control:.4f} | {live:.4f} | {by['sample']['dev_ce']:.4f} | {by['top_k']['dev_ce']:.4f} "
              f"| {ret['sample']:.2f} | {ret['top_k']:.2f} |")
    print("\nmean gain retention over seeds (target: >= 0.95 at T = 1, >= 0.9 at T = 2):")
    for (temp, m), values in sorted(retention.items()):
        sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        print(f"  T = {temp:g}, {m:7s}: {statistics.mean(values):.2f}{sd} over {len(values)} seed(s)")
    print("\n3-epoch distillation, CPU seconds (cache build included) beside live teachers (reference):")
    for temp in sorted({r["T"] for r in runs}):
        rows = [r for r in runs if r["T"] == temp]
        live = statistics.mean(r["train_cpu_s"] for r in rows if r["mode"] == "live")
        live_ce = statistics.mean(r["dev_ce"] for r in rows if r["mode"] == "live")
        print(f"  T = {temp:g}: live {live:.0f} s (dev CE {live_ce:.4f})", end="")
        for m in ("sample", "top_k"):
            mine = [r for r in rows if r["mode"] == m]
            # the cache is built once (first seed) and read by every later student
            cpu = mine[0]["build_cpu_s"] + statistics.mean(r["train_cpu_s"] for r in mine)
            ce = statistics.mean(r["dev_ce"] for r in mine)
            print(f"; {m} {cpu:.0f} s = {live / cpu:.2f}x less (dev CE {ce:.4f}, {100 * (ce / live_ce - 1):+.2f}%)", end="")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50k words, 1 seed, dev CE on 160 windows")
    parser.add_argument("--seeds", type=int, default=None, help="student seeds (default 3, quick 1)")
    parser.add_argument("--temperatures", default="1,2", help="comma-separated T values")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    global DEV_WINDOWS
    DEV_WINDOWS = 160 if args.quick else None
    seeds = list(range(1, 1 + (args.seeds or (1 if args.quick else 3))))
    temps = [float(t) for t in args.temperatures.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = args.work or Path(tmp) / "run"
        t0 = time.perf_counter()
        results = run(out, args.quick, seeds, temps)
        report(results)
        print(f"\n({time.perf_counter() - t0:.0f} s wall in all; {'quick' if args.quick else 'full'} mode)")


if __name__ == "__main__":
    main()
