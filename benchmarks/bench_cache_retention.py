"""How much of distillation's gain each teacher-cache mode keeps, and what it saves, in one run.

On the demo config (configs/demo.yaml: LLaMA + GPT-2 teachers, a 0.36M LLaMA student), every student
distils for --epochs (default 1) on the fixed windows, and so does its control (one data stream for the pair):

* gain retention = (control - cached student) / (control - live student), dev CE over all dev windows,
  for the `sample` cache (64 draws per position, unbiased), the same with `samples: auto` (as many draws,
  at most 255, as hold the noise ratio under its target) and the `top_k` cache (k = 64), at T = 1 and
  T = 2, per student seed (``student.train.seed``, which also seeds the sampled caches' draws: each seed
  draws its own sample; teachers and data are shared);
* CPU seconds of the distillation: live teachers (the reference) beside each cache, its build
  included (one teacher pass builds every seed's cache of a mode and T, as in a sweep; each seed is
  charged its share), and the dev CE each reached.

Targets (issue 21): retention >= 0.95 at T = 1 and >= 0.9 at T = 2, with the interval. Everything runs in this process with one torch thread and is timed in process CPU
seconds (time.process_time), which other processes on a shared machine barely disturb.

    python benchmarks/bench_cache_retention.py                      # demo corpus (300k words), 5 seeds, T = 1, 2
    python benchmarks/bench_cache_retention.py --seeds 2 --max-words 20000 --dev-windows 96   # small scale
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"live": [], "sample": ["distill.cache.mode=sample", "distill.cache.samples=64"],
         "sample_auto": ["distill.cache.mode=sample", "distill.cache.samples=auto"],
         "top_k": ["distill.cache.mode=top_k", "distill.cache.top_k=64"]}
CACHED = [m for m in MODES if m != "live"]


def _config(out: Path, args: argparse.Namespace, extra: list[str]):
    from babyllama.config import load_config

    base = [f"out_dir={out}", "logging.progress=false", f"student.train.epochs={args.epochs}",
            "student.train.windows=fixed", "student.train.eval_every=0"]
    if args.max_words:
        base += [f"data.max_words={args.max_words}"]
    return load_config(ROOT / "configs" / "demo.yaml", base + list(args.set) + extra)


def _dev_ce(cfg, name: str, windows: int | None) -> float:
    from babyllama.evaluate.perplexity import evaluate_perplexity

    result = evaluate_perplexity(cfg.model_dir(name), cfg.data_dir, seq_len=cfg.data.seq_len, max_windows=windows)
    return float(result["ce_nats_per_token"])


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(out: Path, args: argparse.Namespace) -> dict:
    from babyllama.data.prepare import prepare
    from babyllama.distill.formats import fidelity
    from babyllama.distill.run import build_teacher_cache
    from babyllama.training import distill, train_model

    cfg = _config(out, args, [])
    # students, controls and caches of an earlier run in --work resume finished: their dev CE stands (the
    # runs are deterministic), their CPU seconds do not (nothing was computed), so the report leaves them out
    teachers = {t.name for t in cfg.teachers}
    reused = [p.name for p in sorted((out / "checkpoints").glob("*")) if p.name not in teachers]
    reused += [f"cache {p.name}" for p in sorted((out / "cache").glob("*")) if p.is_dir()]
    prepare(cfg)
    teacher_s = _timed(lambda: [train_model(cfg, t.name) for t in cfg.teachers])
    results: dict = {"teachers": {t.name: _dev_ce(cfg, t.name, args.dev_windows) for t in cfg.teachers},
                     "teacher_cpu_s": teacher_s, "epochs": args.epochs, "max_words": args.max_words, "runs": [],
                     "resumed": reused}
    def student(seed: int, temp: float, mode: str):
        return _config(out, args, [f"student.name=s{seed}-T{temp:g}-{mode}", f"student.train.seed={seed}",
                                   f"distill.temperature={temp}", f"distill.cache.enabled={mode != 'live'}", *MODES[mode]])

    seeds = range(1, args.seeds + 1)
    builds = {}  # one teacher pass per (T, mode) builds every seed's cache, as a sweep does (ensure_caches)
    for temp in args.temperatures:
        for mode in modes_at(args.modes, temp):
            first, *others = [student(s, temp, mode) for s in seeds]
            builds[temp, mode] = _timed(lambda f=first, o=others: build_teacher_cache(f, companions=o))
            print(json.dumps({"T": temp, "mode": mode, "shared_build_cpu_s": builds[temp, mode]}), flush=True)
    results["shared_builds"] = [{"T": t, "mode": m, "cpu_s": v} for (t, m), v in builds.items()]
    for seed in seeds:
        ctl = _config(out, args, [f"student.name=s{seed}", f"student.train.seed={seed}"])
        ctl_s = _timed(lambda c=ctl: train_model(c, "control"))
        control = _dev_ce(ctl, ctl.control_name, args.dev_windows)
        for temp in args.temperatures:
            for mode in ["live", *modes_at(args.modes, temp)]:
                c = student(seed, temp, mode)
                build_s = builds.get((temp, mode), 0.0) / args.seeds  # the shared pass, per seed
                train_s = _timed(lambda c=c: distill(c))
                row = {"seed": seed, "T": temp, "mode": mode, "control": control, "control_cpu_s": ctl_s,
                       "dev_ce": _dev_ce(c, c.student.name, args.dev_windows), "build_cpu_s": build_s,
                       "train_cpu_s": train_s}
                if mode != "live":
                    row["fidelity"] = fidelity(build_teacher_cache(c).root)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    return results


def modes_at(modes: list[str], temp: float) -> list[str]:
    """The cached modes run at temperature ``temp``: each entry of --modes is a mode, or mode@T for one T only."""
    return [m.split("@")[0] for m in modes if "@" not in m or float(m.split("@")[1]) == temp]


def _bootstrap_ratio(gains: list[tuple[float, float]], replicates: int = 4000) -> tuple[float, float, float]:
    """Ratio of mean gains (cached / live) over seeds with a 95% percentile interval, seeds resampled."""
    rng = random.Random(0)
    point = sum(c for c, _ in gains) / sum(v for _, v in gains)
    reps = []
    for _ in range(replicates):
        pick = [gains[rng.randrange(len(gains))] for _ in gains]
        live = sum(v for _, v in pick)
        if live > 0:
            reps.append(sum(c for c, _ in pick) / live)
    reps.sort()
    return point, reps[int(0.025 * len(reps))], reps[int(0.975 * len(reps)) - 1]


def report(results: dict) -> None:
    from babyllama.stats import t_interval

    runs = results["runs"]
    print(f"\n{results['epochs']} epoch(s), {results['max_words'] or 'all'} words; teachers' dev CE:",
          ", ".join(f"{k} {v:.4f}" for k, v in results["teachers"].items()), f"({results['teacher_cpu_s']:.0f} CPU s)")
    for temp in sorted({r["T"] for r in runs}):
        by = {(r["seed"], r["mode"]): r for r in runs if r["T"] == temp}
        seeds = sorted({s for s, _ in by})
        live_gain = [by[s, "live"]["control"] - by[s, "live"]["dev_ce"] for s in seeds]
        print(f"\nT = {temp:g}: live gain over the control {statistics.mean(live_gain):.4f} nats "
              f"(per seed {', '.join(f'{g:.4f}' for g in live_gain)})")
        for mode in [m for m in CACHED if (seeds[0], m) in by]:
            gains = [(by[s, mode]["control"] - by[s, mode]["dev_ce"], g) for s, g in zip(seeds, live_gain, strict=True)]
            diff = [by[s, mode]["dev_ce"] - by[s, "live"]["dev_ce"] for s in seeds]
            ci = t_interval(diff)
            line = f"  {mode:11s}: cached - live dev CE {statistics.mean(diff):+.4f}"
            line += f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""
            if len(seeds) > 1 and sum(g for _, g in gains) > 0:
                point, lo, hi = _bootstrap_ratio(gains)
                line += f"; retention {point:.2f} [{lo:.2f}, {hi:.2f}]"
            noise = [by[s, mode].get("fidelity", {}).get("noise_ratio") for s in seeds]
            if all(n is not None for n in noise):
                line += f"; noise ratio {statistics.mean(noise):.3g}"
            draws = {by[s, mode].get("fidelity", {}).get("samples") for s in seeds} - {None}
            if draws:
                line += f"; {'/'.join(str(d) for d in sorted(draws))} draws"
            print(line + f" over {len(seeds)} seeds")
        if results.get("resumed"):
            print(f"  (CPU s not shown: {len(results['resumed'])} students, controls or caches were already in --work "
                  "and resumed finished; time a fresh --work)")
            continue
        live_s = [by[s, "live"]["train_cpu_s"] for s in seeds]
        print("  (CPU s per seed: each cached mode's build is one teacher pass for all seeds, divided by the seeds)")
        for mode in [m for m in CACHED if (seeds[0], m) in by]:
            cached = [by[s, mode]["build_cpu_s"] + by[s, mode]["train_cpu_s"] for s in seeds]
            print(f"  CPU s, {mode}: {statistics.mean(cached):.1f} per seed (build {statistics.mean(by[s, mode]['build_cpu_s'] for s in seeds):.1f}) "
                  f"vs live {statistics.mean(live_s):.1f}: {statistics.mean(live_s) / statistics.mean(cached):.2f}x; "
                  f"sweep of {len(seeds)}: {sum(live_s) / sum(cached):.2f}x")


def finish(results: dict, json_path: Path | None, report: Callable[[dict], None], t0: float, load: float,
           note: str = "") -> None:
    """The end every result benchmark shares: the JSON record if asked, the printed report, wall time and load."""
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    report(results)
    print(f"\n({time.perf_counter() - t0:.0f} s wall in all; 1-minute load average at the start {load:.1f} "
          f"on {os.cpu_count()} CPUs{note})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="student seeds (1..N)")
    parser.add_argument("--epochs", type=float, default=1, help="student epochs (3: the 3-epoch variant)")
    parser.add_argument("--temperatures", default="1,2", help="comma-separated T values")
    parser.add_argument("--modes", default=",".join(CACHED),
                        help=f"cached modes beside live (of {', '.join(CACHED)}); mode@T runs one at that T only")
    parser.add_argument("--max-words", type=int, default=None, help="data.max_words (default: the demo's 300k)")
    parser.add_argument("--dev-windows", type=int, default=None, help="dev CE on this many windows (default: all)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the runs here (default: a temporary folder); a later run with the same --set and "
                             "--max-words resumes its finished teachers and controls from their checkpoints")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override (repeatable), e.g. 'teachers.0.train.epochs=6' for stronger teachers")
    args = parser.parse_args()
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    if unknown := {m.split("@")[0] for m in args.modes} - set(CACHED):
        parser.error(f"--modes: unknown mode(s) {', '.join(sorted(unknown))} (choose from {', '.join(CACHED)})")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.work or Path(tmp) / "run"
        t0, load = time.perf_counter(), os.getloadavg()[0]
        finish(run(out, args), args.json, report, t0, load)


if __name__ == "__main__":
    main()
