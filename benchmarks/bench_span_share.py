"""How much of distillation's gain a teacher with ANOTHER tokenizer keeps through `span` alignment.

On the demo corpus (configs/demo.yaml's data: 300k words of the embedded KJV, seq_len 128), two
teachers of the same architecture (the demo's 2.5M-parameter LLaMA teacher) are trained once, each in
its own `babyllama prepare` + `babyllama train`, on the same words with the same recipe:

* ``exact``: with the student's tokenizer (the demo's 2,000-token BPE);
* ``span``: with another tokenizer (a BPE of ``--other-vocab`` tokens, 1,000 by default), trained by
  babyllama on the same words.

Then one `babyllama sweep` distils each into the demo's 0.36M student (live teachers, T = 1, alpha 0.5),
both loaded with ``teachers[].from`` (so both are trained exactly once, and only the student seeds vary):
the default setting is the ``exact`` teacher with ``vocab_alignment: exact``, the one grid point the
``span`` teacher with ``vocab_alignment: span``; the student's tokenizer is the exact teacher's
(``tokenizer.from``). Every seed's student and control see the same batches, so gains pair by seed.

Printed: each setting's dev-CE gain over the control (nats per student token, the same tokenizer for
every student, so comparable) with its paired t interval over seeds, and the retained share
(span gain / exact gain) with a Fieller interval for a ratio of paired means (t with n - 1 df).
The teachers' recipe is the demo's except ``--teacher-epochs`` (2 by default, the demo trains 3).

    python benchmarks/bench_span_share.py --work runs/span-share --max-words 100000 --teacher-epochs 2 --jobs 2
        # the README's figure: 3 seeds, ~65 min on 2 cores shared with other jobs
    python benchmarks/bench_span_share.py --work runs/span-share --seeds 1 --max-words 50000   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench_cache_retention import finish

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "llama-teacher"


def _demo() -> dict:
    return yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())


def _teacher_config(work: Path, vocab: int, args: argparse.Namespace) -> Path:
    """A teachers-only run: the demo's data and LLaMA teacher, a tokenizer of ``vocab`` tokens."""
    tree = _demo()
    teacher = next(t for t in tree["teachers"] if t["name"] == TEACHER)
    teacher["train"]["epochs"] = args.teacher_epochs
    tree.update(out_dir=str(work / f"teacher-v{vocab}"), teachers=[teacher], student=None, control=False,
                eval={"blimp": None, "perplexity": True}, logging={"progress": False})
    tree["tokenizer"]["vocab_size"] = vocab
    tree["distill"]["cache"] = {"enabled": False}
    if args.max_words:
        tree["data"]["max_words"] = args.max_words
    path = work / f"teacher-v{vocab}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _sweep_config(work: Path, exact: Path, other: Path, args: argparse.Namespace) -> Path:
    """The sweep: the exact teacher (default) against the other-tokenizer teacher with span (one grid point)."""
    tree = _demo()
    tree.update(out_dir=str(work / "sweep"), logging={"progress": False},
                tokenizer={"from": str(exact)}, teachers=[{"name": "teacher", "from": str(exact)}])
    tree["distill"].update(cache={"enabled": False}, vocab_alignment="exact")
    tree["sweep"] = {"seeds": args.seeds, "grid": {"distill.vocab_alignment": ["span"], "teachers.0.from": [str(other)]}}
    if args.max_words:
        tree["data"]["max_words"] = args.max_words
    path = work / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _babyllama(*argv: str) -> None:
    cmd = [sys.executable, "-m", "babyllama", *argv]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


def fieller(num: list[float], den: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Interval of mean(num) / mean(den) from paired values: the ratios R where mean(num - R den) is within
    the t interval of zero (Fieller). None when it is not a bounded interval (the gain in the denominator
    is not clearly above zero)."""
    from babyllama.stats import t_quantile

    n = len(num)
    if n < 2:
        return None
    t = t_quantile(0.5 + level / 2, n - 1)
    mx, my = statistics.mean(num), statistics.mean(den)
    sxx, syy = statistics.variance(num) / n, statistics.variance(den) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(num, den, strict=True)) / (n - 1) / n
    # (mx - R my)^2 <= t^2 (sxx - 2 R sxy + R^2 syy)  ->  a R^2 + b R + c <= 0
    a, b, c = my * my - t * t * syy, -2 * (mx * my - t * t * sxy), mx * mx - t * t * sxx
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return None
    root = math.sqrt(disc)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


def measure(sweep_cfg: Path, seeds: int) -> dict:
    """Per seed: the control's and each setting's student dev CE, read back through the sweep's collector
    (the evaluation registry's verified reader)."""
    from babyllama.config import load_config
    from babyllama.sweep import sweep_members
    from babyllama.sweep_report import collect

    base = load_config(sweep_cfg, [])
    result = collect(base, sweep_members(base, seeds))
    if result["missing"]:
        raise SystemExit(f"unfinished members: {result['missing_why']}")
    rows: dict[int, dict[str, float]] = {}
    for row in result["members"]:
        arm = "exact" if row["setting"] == "default" else "span"
        by_role = {m["role"]: m["dev_ce"] for m in row["models"].values()}
        rows.setdefault(row["seed"], {})[arm] = by_role["student"]
        rows[row["seed"]]["control"] = by_role["control"]
    return {"seeds": rows, "sweep": result["out_dir"]}


def report(results: dict) -> None:
    from babyllama.stats import paired

    rows = results["seeds"]
    seeds = sorted(rows)
    gains = {arm: [rows[s]["control"] - rows[s][arm] for s in seeds] for arm in ("exact", "span")}
    print(f"\n{len(seeds)} seed(s); dev CE in nats per student token (the student's {results['vocab']}-token BPE)")
    for s in seeds:
        print(f"  seed {s}: control {rows[s]['control']:.4f}, exact {rows[s]['exact']:.4f}, span {rows[s]['span']:.4f}")
    for arm in ("exact", "span"):
        p = paired(dict(zip(seeds, gains[arm], strict=True)))
        ci = f" [{p['ci'][0]:.4f}, {p['ci'][1]:.4f}]" if p["ci"] else ""
        print(f"  {arm} gain over the control: {p['mean']:.4f}{ci} nats ({p['holds']}/{p['n']} seeds agree)")
    share = statistics.mean(gains["span"]) / statistics.mean(gains["exact"])
    ci = fieller(gains["span"], gains["exact"])
    print(f"  retained share (span gain / exact gain): {share:.2f}"
          + (f" [{ci[0]:.2f}, {ci[1]:.2f}] (95% Fieller interval)" if ci else " (no bounded interval)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="where the runs go (kept: a rerun resumes)")
    parser.add_argument("--seeds", type=int, default=3, help="student seeds")
    parser.add_argument("--teacher-epochs", type=float, default=2, help="teacher epochs (the demo trains 3)")
    parser.add_argument("--other-vocab", type=int, default=1000, help="the span teacher's BPE vocabulary size")
    parser.add_argument("--max-words", type=int, default=None, help="data.max_words (default: the demo's 300k)")
    parser.add_argument("--jobs", type=int, default=1, help="sweep members (and teacher runs) in parallel")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-seed numbers here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load = time.perf_counter(), os.getloadavg()[0]
    vocab = _demo()["tokenizer"]["vocab_size"]
    configs = [_teacher_config(args.work, v, args) for v in (vocab, args.other_vocab)]
    with ThreadPoolExecutor(args.jobs) as pool:  # `run` wants a student: prepare, then train the teacher
        list(pool.map(lambda c: (_babyllama("prepare", str(c)), _babyllama("train", str(c), "--model", TEACHER)),
                      configs))
    exact, other = (args.work / f"teacher-v{v}" / "models" / TEACHER for v in (vocab, args.other_vocab))
    sweep_cfg = _sweep_config(args.work, exact, other, args)
    _babyllama("sweep", str(sweep_cfg), "--seeds", str(args.seeds), "--jobs", str(args.jobs))
    results = measure(sweep_cfg, args.seeds) | {"vocab": vocab, "other_vocab": args.other_vocab,
                                                 "teacher_epochs": args.teacher_epochs}
    finish(results, args.json, report, t0, load)


if __name__ == "__main__":
    main()
