"""The paper-scale cost table on a CUDA GPU: tokens/s and MFU of every preset model and of distillation.

For each model of the preset (default: configs/babylm-2023-strict-small.yaml: GPT-2 705M, LLaMA 360M,
the 58M student, vocab 16000, 128-token windows, each at its config's micro-batch) we time the train step
as babyllama runs it on a GPU -- bf16 autocast over fp32 weights, TF32 for what stays fp32, fused AdamW --
with torch.compile off and on, plain and with the fused linear + cross-entropy (``train.fused_loss``).
Then one student distillation step, live (both teachers' bf16 forwards + the student's step with the
KD loss) and cached (the student's step against the cache's rows for the batch already in memory, in
the config's cache mode, sampled or top-k; the cache's disk reads are not timed).

The peak is measured (best bf16 ``torch.mm`` of 8192^2 matrices) and, where the GPU is in the table
below, also looked up from its datasheet (dense bf16 tensor-core TFLOP/s); MFU is given against both.
Model FLOPs per token as in bench_train.py: 6 x matmul parameters + 12 x layers x hidden x seq for a
train step, a third of that for a teacher's forward pass.

    python benchmarks/bench_gpu.py             # about 5 minutes on an H100-class GPU
    python benchmarks/bench_gpu.py --quick     # fewer timed steps, no compile of the teachers
    python benchmarks/bench_gpu.py --device cpu --config configs/demo.yaml --quick   # check the script on a CPU

Without a CUDA device (and no ``--device cpu``) it exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = {"pad": 0, "bos": 1, "eos": 2}
# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity), matched by device name.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0,
                         "H100 PCIe": 756.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.2,
                         "RTX 3090": 71.0, "A10G": 70.0}


def datasheet_peak(name: str) -> float | None:
    for key, tflops in sorted(DATASHEET_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])):  # longest match first
        if key in name:
            return tflops * 1e12
    return None


def measured_peak(torch, device, n: int = 8192, repeats: int = 10) -> float:
    """Best bf16 matmul FLOP/s of this device (on a CPU: fp32 and 2048^2, to check the script)."""
    dtype, n = (torch.bfloat16, n) if device.type == "cuda" else (torch.float32, 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(repeats + 1):
        t = _sync_time(torch, device)
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (_sync_time(torch, device) - t))
    return best


def _sync_time(torch, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def step_time(torch, device, step, steps: int, warmup: int) -> float:
    """Fastest of ``steps`` calls of ``step`` after ``warmup`` calls (compilation happens in the warm-up)."""
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(steps):
        t = _sync_time(torch, device)
        step()
        best = min(best, _sync_time(torch, device) - t)
    return best


def train_step(torch, model, x, autocast, fused: bool):
    from babyllama.train.objective import Batch, LMObjective

    objective = LMObjective(fused)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=x.device.type in ("cuda", "cpu"))
    batch = Batch(input_ids=x, window_ids=torch.full((x.shape[0],), -1))

    def step() -> None:
        with autocast():
            loss, _ = objective.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def distill_step(torch, student, teachers, x, autocast, cfg, cached_mode: bool):
    """Live (teachers run every step) or cached (the cache's rows for the batch already in memory) KD step,
    in the config's cache mode ('sample': drawn ids + counts; 'top_k': top-k buckets + tail)."""
    from babyllama.distill.loss import SampledTeachers, SparseTeachers, combine, distillation_loss

    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=x.device.type in ("cuda", "cpu"))
    d, c = cfg.distill, cfg.distill.cache
    n, vocab, dev = x.numel(), student.config.vocab_size, x.device
    g = torch.Generator(device=dev).manual_seed(0)
    cached = None
    if cached_mode and c.mode == "sample":
        ids = torch.randint(0, vocab, (n, c.samples), device=dev, generator=g)
        cached = SampledTeachers.from_counts(ids, torch.ones(n, c.samples, device=dev), torch.rand(n, device=dev))
    elif cached_mode:
        ids = torch.randint(0, vocab, (n, c.top_k), device=dev, generator=g)
        values = torch.randn(n, c.top_k, device=dev, generator=g).half()
        cached = SparseTeachers.from_top_k(ids, values, torch.randn(n, device=dev, generator=g).half())

    def step() -> None:
        with autocast():
            if cached is None:
                with torch.no_grad():
                    t_logits = [t(input_ids=x, use_cache=False).logits for t in teachers]
                loss, _ = distillation_loss(student(input_ids=x, use_cache=False).logits, t_logits, x, alpha=d.alpha,
                                            temperature=d.temperature, reduction=d.reduction)
            else:
                loss, _ = combine(student(input_ids=x, use_cache=False).logits, cached, x, alpha=d.alpha,
                                  temperature=d.temperature, reduction=d.reduction)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def print_table(rows: list[tuple]) -> None:
    """The summary: one row per measured step, MFU against the measured and the datasheet peak."""
    width = max(len(r[0]) for r in rows)
    print(f"\n{'step':<{width}} {'batch':>5} {'tok/s':>12} {'MFU (measured peak)':>20} {'MFU (datasheet)':>16}")
    for label, batch, tps, mfu, mfu_sheet in rows:
        sheet_txt = f"{mfu_sheet:.1%}" if mfu_sheet is not None else "–"
        print(f"{label:<{width}} {batch:>5} {tps:>12,.0f} {mfu:>20.1%} {sheet_txt:>16}")
    print("distill live counts the teachers' forward FLOPs; distill cached counts the student's only")


def distill_rows(torch, device, cfg, compiles: list[bool], steps: int, autocast, bf16: bool, report) -> None:
    """The live and the cached distillation step, each compiled and not, with their FLOPs per token."""
    from babyllama.models import build_model
    from bench_train import flops_per_token

    vocab, seq = cfg.tokenizer.vocab_size, cfg.data.seq_len
    torch.manual_seed(0)
    s = cfg.student
    student = build_model(s, vocab, SPECIAL).to(device).train()
    teachers = [build_model(t, vocab, SPECIAL).to(device, torch.bfloat16 if bf16 else torch.float32).eval()
                for t in cfg.teachers]
    x = torch.randint(3, vocab, (s.train.batch_size, seq), device=device)
    teacher_fpt = sum(flops_per_token(t, tc, seq) / 3 for t, tc in zip(teachers, cfg.teachers, strict=True))
    student_fpt = flops_per_token(student, s, seq)
    for compile in compiles:
        net = torch.compile(student) if compile else student
        t = step_time(torch, device, distill_step(torch, net, teachers, x, autocast, cfg, False), steps, 3 if compile else 1)
        report(f"distill live{' compiled' if compile else ''}", x.shape[0], t, student_fpt + teacher_fpt)
        t = step_time(torch, device, distill_step(torch, net, teachers, x, autocast, cfg, True),
                      steps, 3 if compile else 1)
        report(f"distill cached ({cfg.distill.cache.mode}){' compiled' if compile else ''}", x.shape[0], t, student_fpt)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "babylm-2023-strict-small.yaml"))
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (only to check the script)")
    ap.add_argument("--quick", action="store_true", help="fewer timed steps; teachers not compiled")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per figure (default 10, quick 3)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = ap.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
              "it measures GPU throughput, run it on a machine with one (or pass --device cpu to check the script)",
              file=sys.stderr)
        return 2
    from babyllama.config import load_config
    from babyllama.models import build_model
    from bench_train import flops_per_token  # the same FLOP count as the CPU benchmark

    device = torch.device(args.device)
    cfg = load_config(args.config)
    vocab, seq = cfg.tokenizer.vocab_size, cfg.data.seq_len
    steps = args.steps or (3 if args.quick else 10)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = measured_peak(torch, device)
    sheet = datasheet_peak(name)
    print(f"{name}; torch {torch.__version__}; {'bf16 autocast' if bf16 else 'fp32'}; vocab {vocab}, seq {seq}; "
          f"best of {steps} timed steps")
    print(f"peak: measured {peak / 1e12:.{1 if peak > 1e12 else 3}f} TFLOP/s (matmul)"
          + (f", datasheet {sheet / 1e12:.0f} TFLOP/s" if sheet else ", datasheet: not in the table"))
    rows = []

    def report(label: str, batch: int, seconds: float, flops_per_tok: float) -> None:
        tps = batch * seq / seconds
        mfu = tps * flops_per_tok / peak
        rows.append((label, batch, tps, mfu, tps * flops_per_tok / sheet if sheet else None))
        print(f"  {label}: {tps:,.0f} tok/s", flush=True)

    compiles = [False] if args.no_compile else [False, True]
    for m in [*cfg.teachers, cfg.student]:
        # --quick skips compiling the teachers (the longest compiles); the student is compiled either way
        for compile in [False] if args.quick and m is not cfg.student else compiles:
            for fused in (False, True):
                torch.manual_seed(0)
                model = build_model(m, vocab, SPECIAL).to(device).train()
                net = torch.compile(model) if compile else model
                x = torch.randint(3, vocab, (m.train.batch_size, seq), device=device)
                t = step_time(torch, device, train_step(torch, net, x, autocast, fused), steps, 3 if compile else 1)
                report(f"{m.name} train{' compiled' if compile else ''}{' fused-CE' if fused else ''}",
                       x.shape[0], t, flops_per_token(model, m, seq))
                del model, net
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    distill_rows(torch, device, cfg, compiles, steps, autocast, bf16, report)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
