"""What the sampled teacher cache saves over live teachers for one `distill` and for a sweep of seeds, in one run.

Side by side in one process, on one config (default configs/demo.yaml) whose data and teachers are prepared
and trained first (or found in --work):

* live: each seed's student distils from the live teachers;
* alone: each seed builds its own sampled cache (one teacher pass per seed), then distils from it;
* shared: one teacher pass builds every seed's cache (``build_teacher_cache(cfg, companions)``, as a sweep
  does), then each seed distils from its own.

Every student trains on the fixed windows (the cache's), with the same seeds; times are process CPU
seconds (time.process_time, one torch thread; other processes on a shared machine barely move them) and
wall seconds, the cache builds included. Ratios are live / cached: above 1, the cache is faster.

    python benchmarks/bench_cache_sweep.py --seeds 5 --work /tmp/cache-sweep   # the demo corpus (300k words)
    python benchmarks/bench_cache_sweep.py --seeds 5 --max-words 40000 --work /tmp/cache-sweep   # quick
    python benchmarks/bench_cache_sweep.py --seeds 1 --work /tmp/cache-sweep   # one distill at demo size
    python benchmarks/bench_cache_sweep.py --seeds 5 --alone-seeds 1 --work /tmp/cache-sweep   # no cache per seed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from bench_cache_retention import finish

ROOT = Path(__file__).resolve().parents[1]


def _config(out: Path, args: argparse.Namespace, extra: list[str]):
    from babyllama.config import load_config

    base = [f"out_dir={out}", "logging.progress=false", f"student.train.epochs={args.epochs}",
            "student.train.windows=fixed", "student.train.eval_every=0", "distill.cache.mode=sample",
            f"distill.temperature={args.temperature}"]
    if args.max_words:
        base += [f"data.max_words={args.max_words}"]
    return load_config(args.config, base + list(args.set) + extra)


def _timed(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


VARIANTS = ("live", "alone", "shared")


def _variant_dir(work: Path, name: str, home) -> Path:
    """A run folder of its own (own cache, own students) linked to the prepared data and trained teachers."""
    out = work / name
    (out / "models").mkdir(parents=True, exist_ok=True)
    for link, target in [(out / "data", home.data_dir)] + [(out / "models" / t.name, home.model_dir(t.name))
                                                              for t in home.teachers]:
        if not link.exists():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return out


def run(args: argparse.Namespace) -> dict:
    from babyllama.data.prepare import prepare
    from babyllama.distill.run import build_teacher_cache
    from babyllama.training import distill, train_model

    home = args.work / "home"
    cfg = _config(home, args, [])
    # both are no-ops when --work holds the same data and finished teachers: training resumes a finished
    # checkpoint only when it matches the config and data, so teachers trained with another --set are refused
    prepare(cfg)
    for t in cfg.teachers:
        train_model(cfg, t.name)
    for variant in VARIANTS:  # students and caches of an earlier run would resume finished: nothing to time
        shutil.rmtree(args.work / variant, ignore_errors=True)
    seeds = list(range(1, args.seeds + 1))
    runs: dict = {v: {} for v in VARIANTS}

    def member(variant: str, seed: int, cache: bool):
        out = _variant_dir(args.work, variant, cfg)
        return _config(out, args, [f"student.name=s{seed}", f"student.train.seed={seed}",
                                   f"distill.cache.enabled={cache}"])

    for seed in seeds:  # live and alone interleaved, seed by seed, so drifting load hits both alike
        runs["live"][seed] = {"distill": _timed(lambda s=seed: distill(member("live", s, False)))}
        if seed > args.alone_seeds:
            print(json.dumps({"seed": seed, "live": runs["live"][seed]}), flush=True)
            continue
        c = member("alone", seed, True)
        runs["alone"][seed] = {"build": _timed(lambda c=c: build_teacher_cache(c)), "distill": _timed(lambda c=c: distill(c))}
        print(json.dumps({"seed": seed, "live": runs["live"][seed], "alone": runs["alone"][seed]}), flush=True)
    if len(seeds) > 1:  # with one seed the shared pass is the seed's own: not run twice
        members = [member("shared", s, True) for s in seeds]
        runs["shared"]["build"] = _timed(lambda: build_teacher_cache(members[0], members[1:]))
        for seed, c in zip(seeds, members, strict=True):
            runs["shared"][seed] = {"distill": _timed(lambda c=c: distill(c))}
        print(json.dumps({"shared": runs["shared"]}), flush=True)
    return {"seeds": seeds, "epochs": args.epochs, "max_words": args.max_words, "temperature": args.temperature,
            "runs": runs}


def report(results: dict) -> None:
    runs, seeds = results["runs"], results["seeds"]
    for k, what in enumerate(("CPU", "wall")):
        live = [runs["live"][s]["distill"][k] for s in seeds]
        alone_seeds = [s for s in seeds if s in runs["alone"]]
        alone = [runs["alone"][s]["build"][k] + runs["alone"][s]["distill"][k] for s in alone_seeds]
        build_alone = [runs["alone"][s]["build"][k] for s in alone_seeds]
        live_alone = live[:len(alone_seeds)]
        print(f"{what} s, {results['epochs']:g} epoch(s), T = {results['temperature']:g}, {len(seeds)} seeds:")
        print(f"  one distill: live {live[0]:.1f}, cached {alone[0]:.1f} (build {build_alone[0]:.1f}): "
              f"{live[0] / alone[0]:.2f}x; per seed, mean over {len(alone_seeds)} seed(s) {sum(live_alone) / sum(alone):.2f}x")
        if "build" not in runs["shared"]:
            continue
        shared_build = runs["shared"]["build"][k]
        shared = shared_build + sum(runs["shared"][s]["distill"][k] for s in seeds)
        per_seed = (f"a cache per seed {sum(alone):.1f} ({sum(live) / sum(alone):.2f}x), "
                    if len(alone_seeds) == len(seeds) else "")
        print(f"  sweep of {len(seeds)}: live {sum(live):.1f}, {per_seed}one shared teacher pass {shared:.1f} "
              f"(build {shared_build:.1f}): {sum(live) / shared:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--alone-seeds", type=int, default=None,
                        help="how many seeds (the first) also build a cache of their own (default: all)")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-words", type=int, default=None, help="data.max_words (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override (repeatable), e.g. 'teachers.0.train.epochs=1'")
    parser.add_argument("--work", type=Path, required=True, help="run folders; a later run with the same --set and --max-words resumes its data and finished teachers")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.alone_seeds = args.seeds if args.alone_seeds is None else max(1, min(args.alone_seeds, args.seeds))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    t0, load = time.perf_counter(), os.getloadavg()[0]
    finish(run(args), args.json, report, t0, load)


if __name__ == "__main__":
    main()
