"""Fixed costs: what each command costs beyond its work (start-up, imports, checks, hashing, publishing).

Trains a short run of the demo's model sizes (configs/demo.yaml, ``--steps`` optimizer steps per model,
the first ``--words`` words) in a temporary folder, then times every command as a new process, as a user
runs it, in a table with its wall time, its work and the difference, its fixed cost. For a training stage
the work is its optimizer steps and dev evaluations (the loop's own clock, ``wall_time_s`` in
training_summary.json); a side-by-side teacher stage's clock starts when the run asks for its process, so
the wait for the fork server's imports counts as its fixed cost, while the part of them that overlapped the
run's planning and data preparation does not (the row of the whole first `babyllama run` shows the sum); for `evaluate perplexity` it is scoring the dev windows (timed in this process);
for `--help`, `config`, `report` and `run` on a finished run (every stage verified and skipped) all of it
is fixed cost. A second table times the pieces in this process: publishing a model (verify the best
checkpoint's sha256 sums, copy it), the final dev evaluation (load, score), the sha256 of a model folder
(every result records it), reading and tokenizing BLiMP (the full set when ../shared/data/blimp is there).

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


def seq_len(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["data"]["seq_len"])


def in_process_costs(run: Path, model: str, seq: int) -> list[tuple[str, float, str]]:
    """(what, seconds, note) of the pieces every stage pays besides its steps, timed in this process: publishing
    a model (verify the best checkpoint's sha256 sums, copy it), the final dev evaluation (load the model,
    score every dev window), the sha256 of a model folder (what every result records), reading and
    tokenizing BLiMP."""
    import numpy as np
    import torch

    from babyllama import threads
    from babyllama.data.tokens import load_tokens
    from babyllama.data.windows import num_fixed_windows
    from babyllama.evaluate.blimp import encode, load_pairs
    from babyllama.evaluate.formats import load_causal_lm
    from babyllama.io import file_sha256, forget_file_hashes
    from babyllama.lm.window_ce import window_ce_per_window
    from babyllama.train import checkpoint as ckpt

    threads.apply(log=False)  # the commands' thread policy, so the scoring here is the command's work
    rows = []
    folder, best = run / "models" / model, run / "checkpoints" / model / "best"
    forget_file_hashes()
    t0 = time.perf_counter()
    ckpt.verify(best)
    t_verify = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ckpt.copy_checkpoint(best, Path(tmp) / model)
        t_copy = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in best.iterdir() if f.is_file())
    rows.append(("publish a model: verify the best checkpoint (sha256)", t_verify, f"{size / 1e6:.1f} MB"))
    rows.append(("publish a model: copy it to models/ (sha256 record, atomic)", t_copy, ""))
    t0 = time.perf_counter()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            file_sha256(f)
    rows.append(("sha256 of a model folder (each result records it)", time.perf_counter() - t0, ""))
    t0 = time.perf_counter()
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    rows.append(("import transformers' model code (once per process that loads a model)", time.perf_counter() - t0, ""))
    t0 = time.perf_counter()
    lm, tok = load_causal_lm(folder, torch.device("cpu"))
    rows.append(("final dev evaluation: load the model and tokenizer", time.perf_counter() - t0, ""))
    tokens = load_tokens(run / "data", "dev")
    n = num_fixed_windows(len(tokens), seq)
    t0 = time.perf_counter()
    window_ce_per_window(lm, tokens, np.arange(n, dtype=np.int64), seq, 32)
    rows.append(("final dev evaluation: score every dev window (the work)", time.perf_counter() - t0, f"{n} windows"))
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


def command_rows(exe: list[str], run: Path, cfg_args: list[str], repeat: int) -> list[tuple[str, float, float | None]]:
    """(command, wall, work) of the quick commands as a user runs them; work 0: all of it is fixed cost."""
    model = run / "models" / "llama-teacher"
    rows: list[tuple[str, float, float | None]] = [
        ("python -c 'import torch' (reference)", timed([sys.executable, "-c", "import torch"], repeat)[0], None),
        ("babyllama --help", timed([*exe, "--help"], repeat)[0], 0.0),
        ("babyllama config configs/demo.yaml", timed([*exe, "config", "configs/demo.yaml"], repeat)[0], 0.0),
        ("babyllama run (finished run: every stage verified, skipped)", timed([*exe, "run", *cfg_args], repeat)[0], 0.0),
        ("babyllama report (finished run)", timed([*exe, "report", str(run)], repeat)[0], 0.0),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*exe, "evaluate", "perplexity", "--model", str(model), "--data-dir", str(run / "data"),
               "--seq-len", str(seq_len(run)), "--out", str(Path(tmp) / "ppl.json")]
        rows.append(("babyllama evaluate perplexity (one model, all dev windows)", timed(cmd, repeat)[0], None))
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
        rows = command_rows(exe, run, cfg_args, args.repeat)
        names = {"teacher:llama-teacher": "llama-teacher", "teacher:gpt2-teacher": "gpt2-teacher",
                 "control": "baby-llama-demo-control"}
        rows += [(f"stage {s} ({args.steps} steps)", stages[s], steps_time(run, m)) for s, m in names.items()
                 if s in stages]
        pieces = in_process_costs(run, "llama-teacher", seq_len(run))
    scoring = next(sec for what, sec, _ in pieces if what.startswith("final dev evaluation: score"))
    rows = [(w, wall, scoring if w.startswith("babyllama evaluate perplexity") else work) for w, wall, work in rows]
    report(args, rows, stages, t_first, pieces)


def report(args: argparse.Namespace, rows: list[tuple[str, float, float | None]], stages: dict[str, float],
           t_first: float, pieces: list[tuple[str, float, str]]) -> None:
    """The two tables: each command's wall time, work and fixed cost (the difference); the pieces."""
    print(f"Fixed costs (demo model sizes, {args.steps} steps, {args.words} words; torch threads as babyllama sets "
          f"them; load average {os.getloadavg()[0]:.1f} at the end)")
    print("| command | wall s | work s | fixed cost s |")
    print("|---|---:|---:|---:|")
    for what, wall, work in rows:
        fixed = f"{wall - work:.2f}" if work is not None else "–"
        print(f"| {what} | {wall:.2f} | {'–' if work is None else f'{work:.2f}'} | {fixed} |")
    print(f"| first `babyllama run` (all stages) | {t_first:.2f} | {sum(stages.values()):.2f} (stages) | "
          f"{t_first - sum(stages.values()):.2f} |")
    print("stage times of the first run: " + ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    worst = max((wall - work, what) for what, wall, work in rows if work is not None)
    print(f"largest fixed cost of a command: {worst[0]:.2f} s ({worst[1]}; target <= {TARGET_S:.0f} s): "
          f"{'met' if worst[0] <= TARGET_S else 'NOT met'}")
    print("| piece (in one process) | seconds | note |")
    print("|---|---:|---|")
    for what, sec, note in pieces:
        print(f"| {what} | {sec:.2f} | {note} |")


if __name__ == "__main__":
    main()
