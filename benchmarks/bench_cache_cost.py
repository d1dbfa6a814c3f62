"""What the sampled teacher cache costs: its build against the teachers' forward pass, each extra set of
draws (fresh draws per epoch), and a cached student step against the control's CE step.

Models are the demo's architectures (configs/demo.yaml: LLaMA + GPT-2 teachers of 192 x 4 layers, a
64 x 2 LLaMA student), randomly initialised (their cost does not depend on their weights), on random
tokens; everything on the CPU with one torch thread, timed in process CPU seconds (time.process_time),
which other processes on a shared machine disturb less than wall time, the median of alternating repeats.

    python benchmarks/bench_cache_cost.py                 # vocab 2000 (the demo's) and 16000
    python benchmarks/bench_cache_cost.py --vocab 2000 --windows 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SEQ, BATCH, SAMPLES = 128, 16, 64


def _models(vocab: int):
    from babyllama.config import ModelConfig
    from babyllama.models import build_model

    special = {"pad": 0, "bos": 1, "eos": 2}

    def make(name: str, arch: str, hidden: int, layers: int, heads: int, ffn: int | None):
        cfg = ModelConfig(name=name, arch=arch, hidden_size=hidden, num_layers=layers, num_heads=heads,
                          intermediate_size=ffn, max_position_embeddings=SEQ)
        return build_model(cfg, vocab, special)

    teachers = [make("t1", "llama", 192, 4, 4, 512).eval(), make("t2", "gpt2", 192, 4, 4, None).eval()]
    return teachers, make("student", "llama", 64, 2, 2, 172)


def _cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def bench_build(vocab: int, windows: int, repeats: int) -> dict:
    """Teachers' forward alone vs the whole build (1 and 3 sets of draws), same windows, same batches."""
    import torch

    from babyllama.distill.cache import CacheSpec, ensure_cache
    from babyllama.distill.teachers import TeacherEnsemble

    teachers, _ = _models(vocab)
    ensemble = TeacherEnsemble(teachers)
    tokens = np.random.default_rng(0).integers(3, vocab, windows * SEQ + 1).astype(np.uint16)
    batch = max(1, 4096 // SEQ)

    def forward() -> None:
        with torch.no_grad():
            for start in range(0, windows, batch):
                x = torch.from_numpy(tokens[start * SEQ:min(start + batch, windows) * SEQ].astype(np.int64)).reshape(-1, SEQ)
                ensemble(x)

    def build(sets: int, tmp: Path) -> None:
        spec = CacheSpec(teachers=(("t1", "x"), ("t2", "y")), data_hash=f"bench-{time.time_ns()}", seq_len=SEQ,
                         n_windows=windows, vocab_size=vocab, ensemble="logit_mean", weights=(0.5, 0.5),
                         temperature=2.0, top_k=0, mode="sample", samples=SAMPLES, seed=1, sets=sets)
        ensure_cache(tmp, spec, tokens, lambda: ensemble, device=torch.device("cpu"), batch_size=batch, log=lambda _m: None)

    times: dict[str, list[float]] = {"forward": [], "build_1set": [], "build_3sets": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            times["forward"].append(_cpu(forward))
            times["build_1set"].append(_cpu(lambda r=r: build(1, Path(tmp) / f"a{r}")))
            times["build_3sets"].append(_cpu(lambda r=r: build(3, Path(tmp) / f"b{r}")))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"vocab": vocab, "windows": windows, **{f"{k}_cpu_s": v for k, v in med.items()},
            "build_over_forward": med["build_1set"] / med["forward"],
            "extra_set_over_forward": (med["build_3sets"] - med["build_1set"]) / 2 / med["forward"]}


def bench_step(vocab: int, repeats: int) -> dict:
    """One student forward + backward: the control's CE (plain, fused) and the cached KD step (plain, fused)."""
    import torch

    from babyllama.config import DistillConfig
    from babyllama.distill.cache import CacheSpec, ensure_cache
    from babyllama.distill.objective import DistillObjective
    from babyllama.train.objective import Batch, LMObjective

    teachers, student = _models(vocab)
    windows = 4 * BATCH
    tokens = np.random.default_rng(1).integers(3, vocab, windows * SEQ + 1).astype(np.uint16)
    spec = CacheSpec(teachers=(("t1", "x"), ("t2", "y")), data_hash="step", seq_len=SEQ, n_windows=windows,
                     vocab_size=vocab, ensemble="logit_mean", weights=(0.5, 0.5), temperature=2.0, top_k=0,
                     mode="sample", samples=SAMPLES, seed=1)
    opts = DistillConfig.model_validate({"alpha": 0.5, "temperature": 2.0})
    with tempfile.TemporaryDirectory() as tmp:
        cache = ensure_cache(Path(tmp), spec, tokens, lambda: (lambda x: [m(input_ids=x).logits for m in teachers]),
                             device=torch.device("cpu"), batch_size=BATCH, log=lambda _m: None)
        objectives = {"ce": LMObjective(False), "ce_fused": LMObjective(True)}
        for fused in (False, True):
            o = DistillObjective(opts, [("t1", "x"), ("t2", "y")], [0.5, 0.5], cache_key=cache.key, fused=fused,
                                 open_cache=lambda _d: cache)
            o.setup(torch.device("cpu"), None)
            objectives["cached_fused" if fused else "cached"] = o
        wids = np.arange(BATCH)
        batch = Batch(input_ids=torch.from_numpy(tokens[:BATCH * SEQ].astype(np.int64)).reshape(BATCH, SEQ),
                      window_ids=torch.from_numpy(wids), epochs=torch.zeros(BATCH, dtype=torch.int64))

        def step(o) -> None:
            student.zero_grad(set_to_none=True)
            loss, _ = o.loss(student, batch)
            loss.backward()

        times: dict[str, list[float]] = {k: [] for k in objectives}
        for o in objectives.values():
            step(o)  # warm-up
        for _ in range(repeats):
            for name, o in objectives.items():
                times[name].append(_cpu(lambda o=o: step(o)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"vocab": vocab, **{f"{k}_cpu_s": v for k, v in med.items()},
            "cached_over_ce": med["cached"] / med["ce"], "cached_fused_over_ce": med["cached_fused"] / med["ce"],
            "cached_fused_over_ce_fused": med["cached_fused"] / med["ce_fused"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", default="2000,16000", help="comma-separated vocabulary sizes")
    parser.add_argument("--windows", type=int, default=64, help="windows of 128 tokens the build scores")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    for vocab in (int(v) for v in args.vocab.split(",")):
        print(json.dumps({"bench": "build", **bench_build(vocab, args.windows, args.repeats)}), flush=True)
        print(json.dumps({"bench": "step", **bench_step(vocab, args.repeats)}), flush=True)
    print(f"(1-minute load average at the start: {load:.1f} on {os.cpu_count()} CPUs; process CPU seconds)")


if __name__ == "__main__":
    main()
