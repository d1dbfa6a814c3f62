"""Throughput on a quiet vs a shared machine: torch's default threading against babyllama's thread policy.

Three workloads at the demo's sizes (configs/demo.yaml): a train step of the LLaMA teacher (forward,
backward, AdamW; batch 16 x 128), a live distillation step (both teachers' forwards, the student's
forward + backward with the KD loss), and BLiMP-style scoring of the demo student (batches of 64
sentences of 6-16 tokens; random weights and tokens: only the speed matters). Each is timed for a fixed
wall-clock interval after a warm-up, in four fresh processes:

* old default, quiet / contended: torch as it starts with no thread settings (one thread per core, OpenMP's
  default spin-then-sleep wait);
* policy, quiet / contended: ``babyllama.threads.apply()`` before torch is imported, as every babyllama
  command does (threads from the affinity mask and cgroup quota, OMP_WAIT_POLICY=PASSIVE).

"Contended" means a competing CPU-bound 2-thread PyTorch process (default settings: it spins too),
started by this script and bounded in time, runs throughout. The target (issue 12): contended >= 40% of
quiet for every workload, and the policy's quiet figure within 3% of the old default's.

    python benchmarks/bench_contention.py            # 15 s per figure, ~4 minutes on 2 cores
    python benchmarks/bench_contention.py --quick    # 3 s per figure
    python benchmarks/bench_contention.py --one-thread   # also the policy with --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = {"pad": 0, "bos": 1, "eos": 2}
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "BABYLLAMA_THREADS", "GOMP_SPINCOUNT")
WORKLOADS = {"train": "train step (llama-teacher)", "distill": "distill step (live teachers)", "blimp": "BLiMP scoring"}


# -- inside a worker process (torch is imported only after the thread settings) --------------------------


def _train(torch, seconds: float) -> tuple[float, str]:
    from babyllama.config import load_config
    from babyllama.models import build_model

    demo = load_config(ROOT / "configs" / "demo.yaml")
    m = demo.teachers[0]
    model = build_model(m, demo.tokenizer.vocab_size, SPECIAL).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(3, demo.tokenizer.vocab_size, (m.train.batch_size, demo.data.seq_len))

    def step() -> None:
        model(input_ids=x, labels=x, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, seconds) * x.numel(), "tok/s"


def _distill(torch, seconds: float) -> tuple[float, str]:
    from babyllama.config import load_config
    from babyllama.distill.loss import distillation_loss
    from babyllama.models import build_model

    demo = load_config(ROOT / "configs" / "demo.yaml")
    vocab = demo.tokenizer.vocab_size
    teachers = [build_model(t, vocab, SPECIAL).eval() for t in demo.teachers]
    student = build_model(demo.student, vocab, SPECIAL).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    x = torch.randint(3, vocab, (demo.student.train.batch_size, demo.data.seq_len))

    def step() -> None:
        with torch.no_grad():
            t_logits = [t(input_ids=x, use_cache=False).logits for t in teachers]
        s_logits = student(input_ids=x, use_cache=False).logits
        loss, _ = distillation_loss(s_logits, t_logits, x, alpha=demo.distill.alpha,
                                    temperature=demo.distill.temperature, reduction=demo.distill.reduction)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _timed(step, seconds) * x.numel(), "tok/s"


def _blimp(torch, seconds: float) -> tuple[float, str]:
    from babyllama.config import load_config
    from babyllama.evaluate.blimp import score_sequences
    from babyllama.models import build_model

    demo = load_config(ROOT / "configs" / "demo.yaml")
    model = build_model(demo.student, demo.tokenizer.vocab_size, SPECIAL).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, demo.tokenizer.vocab_size, (int(n),), generator=g).tolist()
            for n in torch.randint(6, 17, (256,), generator=g)]

    def step() -> None:
        with torch.inference_mode():
            score_sequences(model, seqs, prefix_id=SPECIAL["eos"], batch_size=64)

    return _timed(step, seconds) * len(seqs) / 2, "pairs/s"


def _timed(step, seconds: float) -> float:
    """Calls of ``step`` per wall-clock second over at least ``seconds``, after one warm-up call."""
    step()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or calls == 0:
        step()
        calls += 1
    return calls / elapsed


def worker(setting: str, seconds: float, names: list[str]) -> None:
    policy = None
    if setting != "old":
        from babyllama import threads

        policy = threads.apply(1 if setting == "one-thread" else None, log=False)
    import torch

    torch.manual_seed(0)
    out = {"threads": torch.get_num_threads(), "wait": os.environ.get("OMP_WAIT_POLICY", "default"),
           "decision": policy.as_dict() if policy else None}
    for name in names:
        rate, unit = {"train": _train, "distill": _distill, "blimp": _blimp}[name](torch, seconds)
        out[name] = {"rate": rate, "unit": unit}
    print(json.dumps(out), flush=True)


def compete(seconds: float) -> None:
    """The competing job: a default-configured 2-thread PyTorch process doing small CPU-bound steps."""
    import torch

    a, b = torch.randn(256, 256), torch.randn(256, 256)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        (torch.relu(a @ b) @ b).sum()


# -- the driver ------------------------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return {**env, **extra}


def measure(setting: str, contended: bool, seconds: float, names: list[str]) -> dict:
    """One fresh worker process; with ``contended`` the competitor runs for the worker's whole life."""
    limit = 900 + 10 * seconds * len(names)  # start-up alone can take minutes on a busy machine
    rival = None
    if contended:
        rival = subprocess.Popen([sys.executable, __file__, "--compete", str(limit)],
                                 env=_clean_env(OMP_NUM_THREADS="2"), stdout=subprocess.DEVNULL)
    try:
        done = subprocess.run([sys.executable, __file__, "--worker", setting, "--seconds", str(seconds),
                               "--only", ",".join(names)], env=_clean_env(), capture_output=True, text=True,
                              timeout=limit)
    except subprocess.TimeoutExpired:
        sys.exit(f"bench_contention: the {setting} worker did not finish in {limit:.0f} s; is the machine overloaded?")
    finally:
        if rival is not None:
            rival.terminate()
            rival.wait()
    if done.returncode != 0:
        sys.exit(f"worker {setting} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s per figure instead of 15")
    ap.add_argument("--seconds", type=float, default=None, help="timed seconds per figure")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads: " + ", ".join(WORKLOADS))
    ap.add_argument("--one-thread", action="store_true", help="also measure the policy with --threads 1")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compete", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 15.0)
    names = [n for n in args.only.split(",") if n]
    if unknown := [n for n in names if n not in WORKLOADS]:
        sys.exit(f"bench_contention: unknown workload(s) {unknown}; expected some of {list(WORKLOADS)}")
    if args.compete is not None:
        return compete(args.compete)
    if args.worker:
        return worker(args.worker, seconds, names)

    settings = ["old", "policy"] + (["one-thread"] if args.one_thread else [])
    results = {}
    for s in settings:
        for contended in (False, True):
            results[s, contended] = measure(s, contended, seconds, names)
            print(f"  measured {s}, {'contended' if contended else 'quiet'} "
                  f"({results[s, contended]['threads']} threads, OMP_WAIT_POLICY={results[s, contended]['wait']})",
                  flush=True)
    print(f"\n{seconds:g} s per figure, wall-clock throughput; contended = one competing 2-thread PyTorch process "
          f"started by this script; {os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}")
    labels = {"old": "old default", "policy": "policy", "one-thread": "policy, 1 thread"}
    header = f"{'workload':<29} {'unit':<8}" + "".join(f" | {labels[s] + ' quiet':>18} {'contended':>10} {'ratio':>6}"
                                                      for s in settings) + " | policy/old quiet"
    print(header)
    print("-" * len(header))
    for n in names:
        row = f"{WORKLOADS[n]:<29} {results['old', False][n]['unit']:<8}"
        for s in settings:
            q, c = results[s, False][n]["rate"], results[s, True][n]["rate"]
            row += f" | {q:>18,.0f} {c:>10,.0f} {c / q:>6.0%}"
        print(row + f" | {results['policy', False][n]['rate'] / results['old', False][n]['rate']:>16.2f}")
    print("target: contended >= 40% of quiet (ideal 50%); policy quiet within 3% of the old default's")


if __name__ == "__main__":
    main()
