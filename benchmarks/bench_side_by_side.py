"""The demo's training steps at 1 and 2 threads, fp32 and bf16, and two models at once: what `side_by_side`
and `train.precision` are decided from (README, "The demo").

For each model of ``configs/demo.yaml`` (the two teachers, the student's architecture) one training step
as the loop takes it with the config's loss (``train.fused_loss``): forward with the loss, backward,
clipping, fused AdamW, zero_grad, on random tokens of the demo's batch (token values do not change the
speed). Each setting runs in its own process (threads are fixed before torch loads, as in every
babyllama command), the settings interleaved over ``--rounds``; per setting the best and the median wall
time of a step, and the median process CPU time (for a one-thread step, the figure other processes on a
shared machine disturb least):

* ``1 thread`` / ``2 threads``: one model alone; their ratio is how well its step scales;
* ``1 thread, other loss``: ``train.fused_loss`` flipped (the fused chunked CE against the plain one);
* ``1 thread, bf16``: the step under bf16 autocast (``train.precision: bf16``);
* ``1 thread, both teachers at once``: the two teachers stepping at the same time in two processes of one
  thread each (what `babyllama run` does under ``side_by_side``), so cache and memory contention count.

From these, per step of the two teachers: one after the other at 2 threads costs t2(llama) + t2(gpt2),
side by side max(t1 both(llama), t1 both(gpt2)); their ratio is the teacher stages' expected speed-up
(both teachers take the same number of steps). ``--whole`` also times the real thing, as `babyllama run`
trains them (the teachers' stages alone, ``--whole-steps`` steps each, one after the other and side by
side, interleaved, best of 2): only meaningful on a quiet machine.

    python benchmarks/bench_side_by_side.py                 # about 2 minutes on 2 CPU cores
    python benchmarks/bench_side_by_side.py --whole --whole-steps 120   # plus the stages themselves
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"

# One setting in a fresh process: threads are fixed before torch loads, as every babyllama command does.
WORKER = r"""
import json, os, sys, time
threads, name, steps, precision, fused = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[8]
os.environ["OMP_NUM_THREADS"] = str(threads)
import torch
from babyllama.config import load_config
from babyllama.models import build_model
from babyllama.train.objective import Batch, LMObjective
cfg = load_config(sys.argv[5])
m = cfg.model(name)
torch.manual_seed(0)
model = build_model(m, cfg.tokenizer.vocab_size, {"pad": 0, "bos": 1, "eos": 2})
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
objective = LMObjective(m.train.fused_loss if fused == "config" else fused == "fused")
dtype = torch.bfloat16 if precision == "bf16" else None
objective.setup(torch.device("cpu"), dtype)
x = torch.randint(3, cfg.tokenizer.vocab_size, (m.train.batch_size, cfg.data.seq_len))
batch = Batch(input_ids=x, window_ids=torch.zeros(len(x), dtype=torch.int64), epochs=torch.zeros(len(x), dtype=torch.int64))
go = sys.argv[6] if sys.argv[6] != "-" else None
times, cpu = [], []
for i in range(steps + 3):
    if i == 3 and go:  # both processes of a pair start timing together
        open(go + f".{name}", "w").close()
        while not all(os.path.exists(go + f".{n}") for n in sys.argv[7].split(",")):
            time.sleep(0.001)
    t, c = time.perf_counter(), time.process_time()
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss, _ = objective.loss(model, batch)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= 3:
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
print(json.dumps([times, cpu]))
"""


def run_worker(threads: int, name: str, steps: int, precision: str, fused: str = "config", go: str | None = None,
               pair: list[str] | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-c", WORKER, str(threads), name, str(steps), precision, str(DEMO), go or "-",
            ",".join(pair or []), fused]
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)


def collect(proc: subprocess.Popen) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each timed step."""
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench_side_by_side: a worker failed (exit {proc.returncode})")
    wall, cpu = json.loads(out.strip().splitlines()[-1])
    return wall, cpu


#: (setting, threads, precision, loss): each model alone; "other loss" is the config's fused_loss flipped.
SETTINGS = (("1 thread", 1, "fp32", "config"), ("1 thread, other loss", 1, "fp32", "other"),
            ("1 thread, bf16", 1, "bf16", "config"), ("2 threads", 2, "fp32", "config"))
BOTH = "1 thread, both teachers at once"


def step_times(models: list[str], teachers: list[str], steps: int, rounds: int,
               fused: dict[str, bool]) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """{(model, setting): (wall seconds, CPU seconds) per step}, settings interleaved over ``rounds``."""
    out: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    def add(key: tuple[str, str], got: tuple[list[float], list[float]]) -> None:
        wall, cpu = out.setdefault(key, ([], []))
        wall.extend(got[0])
        cpu.extend(got[1])

    for _ in range(rounds):
        for name in models:
            for setting, threads, precision, loss in SETTINGS:
                flag = "config" if loss == "config" else ("plain" if fused[name] else "fused")
                add((name, setting), collect(run_worker(threads, name, steps, precision, flag)))
        with tempfile.TemporaryDirectory() as tmp:
            go = str(Path(tmp) / "go")
            procs = [run_worker(1, name, steps, "fp32", "config", go, teachers) for name in teachers]
            for name, proc in zip(teachers, procs, strict=True):
                add((name, BOTH), collect(proc))
    return out


def whole_stages(steps: int) -> tuple[float, float]:
    """(seconds one after the other, seconds side by side) of the demo's teacher stages, ``steps`` steps each."""
    from babyllama.config import load_config
    from babyllama.pipeline import run_pipeline

    sets = {"logging.progress": False, **{f"teachers.{i}.train.max_steps": steps for i in range(2)}}
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in (False, True, False, True):
            out = Path(tmp) / f"side_by_side_{mode}"
            overrides = [f"{k}={v}" for k, v in {**sets, "out_dir": out, "side_by_side": mode}.items()]
            cfg = load_config(DEMO, overrides)
            run_pipeline(cfg, only=["prepare"])
            teachers = [f"teacher:{t.name}" for t in cfg.teachers]
            t = time.perf_counter()
            run_pipeline(cfg, only=teachers)
            seconds.setdefault(mode, []).append(time.perf_counter() - t)
            for folder in ("models", "checkpoints"):
                subprocess.run(["rm", "-rf", str(out / folder)], check=True)
    return min(seconds[False]), min(seconds[True])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--whole", action="store_true", help="also time the teachers' stages as `babyllama run` trains them")
    ap.add_argument("--whole-steps", type=int, default=120)
    args = ap.parse_args()
    from babyllama import threads
    from babyllama.config import load_config

    threads.apply(log=False)  # this process's policy, as `babyllama run` decides it (for --whole)

    cfg = load_config(DEMO)
    teachers = [t.name for t in cfg.teachers]
    models = [*teachers, cfg.student.name]
    fused = {name: cfg.model(name).train.fused_loss for name in models}
    load = os.getloadavg()[0]
    times = step_times(models, teachers, args.steps, args.rounds, fused)
    print(f"load average before: {load:.2f}, after: {os.getloadavg()[0]:.2f} (2 cores: above ~0.5 the wall figures "
          "are shared; a 1-thread step's CPU time is disturbed far less)")
    print(f"{'model':<18} {'setting':<32} {'best ms':>8} {'median ms':>10} {'CPU ms':>8}")
    for (name, setting), (wall, cpu) in times.items():
        print(f"{name:<18} {setting:<32} {1000 * min(wall):>8.1f} {1000 * statistics.median(wall):>10.1f} "
              f"{1000 * statistics.median(cpu):>8.1f}")
    best = {k: min(v[0]) for k, v in times.items()}
    cpu = {k: statistics.median(v[1]) for k, v in times.items()}
    for name in models:
        loss = "fused" if fused[name] else "plain"
        print(f"{name}: 2 threads {best[(name, '1 thread')] / best[(name, '2 threads')]:.2f}x one thread (best wall); "
              f"at one thread (median CPU time) the config's {loss} loss is {cpu[(name, '1 thread, other loss')] / cpu[(name, '1 thread')]:.2f}x "
              f"as fast as the other, bf16 {cpu[(name, '1 thread')] / cpu[(name, '1 thread, bf16')]:.2f}x as fast as fp32")
    sequential = sum(best[(t, "2 threads")] for t in teachers)
    side = max(best[(t, BOTH)] for t in teachers)
    print(f"teachers per step (best wall): one after the other at 2 threads {1000 * sequential:.1f} ms, side by side at "
          f"1 thread {1000 * side:.1f} ms: side by side is {sequential / side:.2f}x")
    if args.whole:
        seq_s, side_s = whole_stages(args.whole_steps)
        print(f"teacher stages, {args.whole_steps} steps each, as `babyllama run` trains them (best of 2): one after "
              f"the other {seq_s:.1f} s, side by side {side_s:.1f} s: {seq_s / side_s:.2f}x")


if __name__ == "__main__":
    main()
