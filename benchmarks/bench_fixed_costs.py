"""Fixed costs: what each command costs beyond its work (start-up, imports, checks, hashing, publishing).

Trains a short run of the demo's model sizes (configs/demo.yaml, ``--steps`` optimizer steps per model,
the first ``--words`` words) in a temporary folder, then times every command as a new process, as a user
runs it. For a training stage the work is its optimizer steps and dev evaluations (the loop's own clock,
``wall_time_s`` in training_summary.json); for `--help`, `config` and `run` on a finished run there is no
work, so all of it is fixed cost. Also timed in this process: reading and tokenizing the full BLiMP (when
../shared/data/blimp is there) and the sha256 of a model folder (what every result records).

    python benchmarks/bench_fixed_costs.py              # about a minute on 2 quiet cores
    python benchmarks/bench_fixed_costs.py --steps 40 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 3.0
BLIMP = ROOT.parent / "shared" / "data" / "blimp"


def timed(cmd: list[str], repeat: int = 1) -> tuple[float, str]:
    """Median wall seconds of ``cmd`` in a new process (and the last run's output); a failure stops the benchmark."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        out = proc.stdout + proc.stderr
    return statistics.median(times), out


def stage_times(output: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r"\[run\] (\S+): done in ([0-9.]+)s", output)}


def steps_time(run: Path, model: str) -> float | None:
    summary = run / "models" / model / "training_summary.json"
    return json.loads(summary.read_text())["wall_time_s"] if summary.is_file() else None


def in_process_costs(run: Path, model: str) -> list[tuple[str, float, str]]:
    """(what, seconds, note) of the pieces every evaluation pays: reading and tokenizing BLiMP, hashing a model."""
    from babyllama.evaluate.blimp import encode, load_pairs
    from babyllama.evaluate.formats import load_causal_lm
    from babyllama.io import file_sha256

    rows = []
    folder = run / "models" / model
    t0 = time.perf_counter()
    size = sum(len(file_sha256(f)) and f.stat().st_size for f in folder.iterdir() if f.is_file())
    rows.append(("sha256 of a model folder", time.perf_counter() - t0, f"{size / 1e6:.1f} MB"))
    _, tok = load_causal_lm(folder, "cpu")
    for name, data in (("embedded BLiMP (6,700 pairs)", "embedded:blimp"), ("full BLiMP (67,000 pairs)", BLIMP)):
        if name.startswith("full") and not Path(data).is_dir():
            continue
        t0 = time.perf_counter()
        pairs, _ = load_pairs(data)
        t_load = time.perf_counter() - t0
        t0 = time.perf_counter()
        encode(tok, [p.good for p in pairs] + [p.bad for p in pairs], leading_space=True)
        rows.append((f"read {name}", t_load, ""))
        rows.append((f"tokenize {name} (once for all models)", time.perf_counter() - t0, ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per model")
    ap.add_argument("--words", type=int, default=30000, help="corpus words (the demo's embedded corpus)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each quick command (median)")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "babyllama"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        sets = [f"out_dir={run}", f"data.max_words={args.words}", "logging.progress=false"]
        sets += [f"{m}.train.max_steps={args.steps}" for m in ("teachers.0", "teachers.1", "student")]
        cfg_args = ["configs/demo.yaml", *[a for s in sets for a in ("--set", s)]]
        t_first, out = timed([*exe, "run", *cfg_args])
        stages = stage_times(out)
        rows: list[tuple[str, float, float | None]] = []  # (command, wall, work or None)
        rows.append(("python -c 'import torch' (reference)", timed([sys.executable, "-c", "import torch"], args.repeat)[0], None))
        rows.append(("babyllama --help", timed([*exe, "--help"], args.repeat)[0], 0.0))
        rows.append(("babyllama config configs/demo.yaml", timed([*exe, "config", "configs/demo.yaml"], args.repeat)[0], 0.0))
        rows.append(("babyllama run (finished run: every stage skipped)", timed([*exe, "run", *cfg_args], args.repeat)[0], 0.0))
        rows.append(("babyllama report (finished run)", timed([*exe, "report", str(run)], args.repeat)[0], None))
        names = {"teacher:llama-teacher": "llama-teacher", "teacher:gpt2-teacher": "gpt2-teacher",
                 "control": "baby-llama-demo-control"}
        stage_rows = [(f"stage {s} ({args.steps} steps)", stages[s], steps_time(run, m)) for s, m in names.items()
                      if s in stages]
        pieces = in_process_costs(run, "llama-teacher")
    print(f"Fixed costs (demo model sizes, {args.steps} steps, {args.words} words; torch threads as babyllama sets them)")
    print("| command | wall s | work s | fixed cost s |")
    print("|---|---:|---:|---:|")
    for what, wall, work in [*rows, *stage_rows]:
        fixed = f"{wall - work:.2f}" if work is not None else "–"
        print(f"| {what} | {wall:.2f} | {'–' if work is None else f'{work:.2f}'} | {fixed} |")
    print(f"| first `babyllama run` (all stages) | {t_first:.2f} | {sum(stages.values()):.2f} (stages) | "
          f"{t_first - sum(stages.values()):.2f} |")
    print("stage times of the first run: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    worst = max(wall - work for _, wall, work in [*rows, *stage_rows] if work is not None)
    print(f"largest fixed cost of a command: {worst:.2f} s (target <= {TARGET_S:.0f} s): "
          f"{'met' if worst <= TARGET_S else 'NOT met'}")
    print("| piece (in one process) | seconds | note |")
    print("|---|---:|---|")
    for what, sec, note in pieces:
        print(f"| {what} | {sec:.2f} | {note} |")


if __name__ == "__main__":
    main()
