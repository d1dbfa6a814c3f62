"""babyllama against the paper's recipe written on the Hugging Face Trainer, stage by stage, in one run.

What a user would otherwise write: ``Trainer`` with ``TrainingArguments`` for each teacher and the
control, and a ``Trainer`` subclass whose ``compute_loss`` adds the ensemble KD term for the student (the
structure of the reference code; our own code here). Same sizes on both sides, as in issue 12: teachers
GPT-2 and LLaMA of 6 layers x 256, student/control LLaMA of 4 x 128, vocab 8000, batch 32 x 128, 40
optimizer steps, live teachers, AdamW, cosine schedule with warm-up, fp32 on the CPU, on the same
synthetic token files (token values do not change the speed).

Fairness: both sides build their models with ``babyllama.models.build_model`` (SDPA attention, fp32), use
fused AdamW (the Trainer's default ``adamw_torch_fused``), clip gradients at 1.0 and end with a dev
evaluation on the same 64 windows and a saved model. Before each stage both code paths run two untimed
steps of that stage's models (oneDNN's kernel caches and the allocator are per process, so whichever side
ran first would otherwise pay their warm-up alone), and the order alternates from stage to stage.

Two figures per stage and side (and, for every stage under the 1.2x target, where our step's time goes:
its matmul, attention, softmax/CE, optimizer and element-wise shares of the operator CPU time, from
torch.profiler, and the most that removing everything but the matmuls could gain):
* in-loop tokens/s: optimizer steps after the first ``--warmup`` ones, from step-end times (ours: the
  metrics.jsonl rates; Trainer: a step-end callback);
* whole stage: seconds from the call to a finished, saved model (set-up, final dev evaluation and saving
  included; interpreter start-up and imports excluded on both sides), and the fixed cost: whole stage
  minus the steps at the in-loop rate.

    python benchmarks/bench_vs_trainer.py            # 40 steps per stage
    python benchmarks/bench_vs_trainer.py --quick    # 8 steps per stage
    python benchmarks/bench_vs_trainer.py --quick --fused --compile   # also ours with train.fused_loss / train.compile
Needs ``accelerate`` (the Trainer's dependency): pip install 'babyllama[bench]'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from babyllama.config import Config
from babyllama.data.tokens import load_tokens
from babyllama.models import build_model
from babyllama.training import distill, train_model
from bench_train import SPECIAL, synthetic_data

VOCAB, SEQ, BATCH, LR = 8000, 128, 32, 1e-3


def experiment(work: Path, steps: int, fused: bool = False, compile: bool = False) -> Config:
    train = {"batch_size": BATCH, "max_steps": steps, "lr": LR, "warmup_steps": 2, "log_every": 1,
             "eval_windows": 64, "eval_every": 0, "save_every": 0, "fused_loss": fused, "compile": compile}
    teacher = {"hidden_size": 256, "num_layers": 6, "num_heads": 8, "max_position_embeddings": SEQ, "train": train}
    return Config.model_validate({
        "out_dir": str(work), "seed": 0, "data": {"seq_len": SEQ}, "tokenizer": {"vocab_size": VOCAB},
        "logging": {"progress": False},
        "teachers": [{"name": "gpt2-teacher", "arch": "gpt2", **teacher}, {"name": "llama-teacher", "arch": "llama", **teacher}],
        "student": {"name": "student", "arch": "llama", "hidden_size": 128, "num_layers": 4, "num_heads": 4,
                    "max_position_embeddings": SEQ, "train": train},
        "control": True,
        "distill": {"alpha": 0.5, "temperature": 2.0, "cache": {"enabled": False}},
    })


def in_loop_rate(step_seconds: list[float], warmup: int) -> float:
    timed = step_seconds[warmup:]
    return len(timed) * BATCH * SEQ / sum(timed)


# -- ours ------------------------------------------------------------------------------------------------


def ours(cfg: Config, stage: str, warmup: int) -> tuple[float, float]:
    """(in-loop tokens/s, whole-stage seconds) of one babyllama stage, as `babyllama train` / `distill` run it."""
    t = time.perf_counter()
    out = distill(cfg) if stage == "distill" else train_model(cfg, stage)
    whole = time.perf_counter() - t
    rates = [json.loads(x)["tokens_per_s"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return in_loop_rate([BATCH * SEQ / r for r in rates], warmup), whole


def warm_up(cfg: Config, stage: str, teachers_dir: Path) -> None:
    """Two untimed steps of the stage's models (and its teachers' forward), so neither side pays the first touch."""
    name = cfg.student.name if stage == "distill" else stage
    torch.manual_seed(0)
    model = build_model(cfg.model(name), VOCAB, SPECIAL)
    x = torch.randint(3, VOCAB, (BATCH, SEQ))
    teachers = []
    if stage == "distill":
        teachers = [type(build_model(tc, VOCAB, SPECIAL)).from_pretrained(teachers_dir / tc.name).eval() for tc in cfg.teachers]
    for _ in range(2):
        with torch.no_grad():
            for t in teachers:
                t(input_ids=x, use_cache=False)
        model(input_ids=x, labels=x, use_cache=False).loss.backward()


# -- where the time goes ---------------------------------------------------------------------------------

#: Operator name prefixes of each share of a step (self CPU time); everything else is "element-wise and other".
SHARES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul"),
    "attention": ("aten::_scaled_dot_product", "aten::scaled_dot_product"),
    "softmax / CE": ("aten::_log_softmax", "aten::log_softmax", "aten::nll_loss", "aten::_softmax", "aten::softmax",
                     "aten::kl_div", "aten::logsumexp"),
    "optimizer": ("aten::_fused_adamw", "aten::_foreach"),
}


def time_shares(cfg: Config, stage: str, teachers_dir: Path, steps: int = 3) -> dict[str, float]:
    """{share: fraction of the step's operator CPU time} of one stage's training step (the HF forward with its
    loss, backward, fused AdamW; the distillation adds its teachers' forward and the KD term), torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    name = cfg.student.name if stage == "distill" else stage
    torch.manual_seed(0)
    model = build_model(cfg.model(name), VOCAB, SPECIAL)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    teachers = [type(build_model(tc, VOCAB, SPECIAL)).from_pretrained(teachers_dir / tc.name).eval()
                for tc in cfg.teachers] if stage == "distill" else []
    x = torch.randint(3, VOCAB, (BATCH, SEQ))

    def step() -> None:
        out = model(input_ids=x, labels=x, use_cache=False)
        loss = out.loss
        if teachers:
            with torch.no_grad():
                mean = torch.stack([t(input_ids=x, use_cache=False).logits for t in teachers]).mean(0)
            loss = loss + F.kl_div(F.log_softmax(out.logits, -1), F.softmax(mean, -1), reduction="batchmean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals = {k: 0.0 for k in [*SHARES, "element-wise and other"]}
    for event in prof.key_averages():
        share = next((k for k, prefixes in SHARES.items() if event.key.startswith(prefixes)), "element-wise and other")
        totals[share] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


def print_shares(rows: list[tuple], shares: dict[str, dict[str, float]]) -> None:
    """Where the time of each stage below 1.2x goes, and the most a step of the same operators could gain."""
    for stage, *_ in rows:
        if stage not in shares:
            continue
        got = shares[stage]
        parts = ", ".join(f"{k} {100 * v:.0f}%" for k, v in got.items())
        print(f"where {stage}'s step time goes (ours, operator CPU time): {parts}; the Trainer runs the same forward "
              f"and backward, so even removing every non-matmul cost would give at most "
              f"{1 / max(got['matmul'], 1e-9):.2f}x: only cheaper matmuls (bf16 units, larger tiles) close the gap")


# -- the Hugging Face Trainer recipe ---------------------------------------------------------------------


class Windows(torch.utils.data.Dataset):
    """Fixed, non-overlapping windows of a token file, as causal-LM examples."""

    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = torch.from_numpy(tokens.astype(np.int64))

    def __len__(self) -> int:
        return len(self.tokens) // SEQ

    def __getitem__(self, i: int) -> dict:
        x = self.tokens[i * SEQ : (i + 1) * SEQ]
        return {"input_ids": x, "labels": x}


def trainer_stage(cfg: Config, stage: str, steps: int, warmup: int, out: Path) -> tuple[float, float]:
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    class DistillTrainer(Trainer):
        """alpha * CE + (1 - alpha) * T^2 * KL(mean teacher distribution || student), as the paper."""

        def __init__(self, *args, teachers, alpha, temperature, **kwargs):
            super().__init__(*args, **kwargs)
            self.teachers, self.alpha, self.temperature = teachers, alpha, temperature

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(**inputs)
            with torch.no_grad():
                teacher = torch.stack([t(**inputs).logits for t in self.teachers]).mean(0)
            t_ = self.temperature
            kd = F.kl_div(F.log_softmax(out.logits / t_, -1), F.softmax(teacher / t_, -1), reduction="batchmean") * t_**2
            loss = self.alpha * out.loss + (1 - self.alpha) * kd
            return (loss, out) if return_outputs else loss

    t = time.perf_counter()
    name = cfg.student.name if stage == "distill" else stage
    m = cfg.model(name)
    torch.manual_seed(0)
    model = build_model(m, VOCAB, SPECIAL)
    args = TrainingArguments(output_dir=str(out / name), per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH,
                             max_steps=steps, learning_rate=LR, warmup_steps=2, lr_scheduler_type="cosine",
                             weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, save_strategy="no", report_to=[],
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, seed=0)
    data = {"train_dataset": Windows(load_tokens(cfg.data_dir, "train")),
            "eval_dataset": Windows(load_tokens(cfg.data_dir, "dev")[: 64 * SEQ])}
    clock = StepClock()
    if stage == "distill":
        teachers = [type(build_model(tc, VOCAB, SPECIAL)).from_pretrained(out / tc.name).eval() for tc in cfg.teachers]
        trainer = DistillTrainer(model=model, args=args, callbacks=[clock], teachers=teachers, alpha=cfg.distill.alpha,
                                 temperature=cfg.distill.temperature, **data)
    else:
        trainer = Trainer(model=model, args=args, callbacks=[clock], **data)
    trainer.remove_callback(PrinterCallback)  # its log dicts would interleave with our table
    clock.ends = [time.perf_counter()]
    trainer.train()
    trainer.evaluate()
    trainer.save_model(str(out / name))
    whole = time.perf_counter() - t
    return in_loop_rate(list(np.diff(clock.ends)), warmup), whole


def measure(work: Path, steps: int, warmup: int, variants: list[tuple[str, bool, bool]]) -> list[tuple]:
    """Every stage on both sides, ours once per variant; rows of (stage, Trainer result, {variant: our result})."""
    cfgs = {name: experiment(work / name, steps, fused, compile) for name, fused, compile in variants}
    for cfg in cfgs.values():
        synthetic_data(cfg, VOCAB, (BATCH * steps + 8) * SEQ)
    plain = cfgs["ours"]
    rows = []
    for i, stage in enumerate(["gpt2-teacher", "llama-teacher", "distill", plain.control_name]):
        warm_up(plain, stage, plain.out / "models")
        results: dict[str, tuple[float, float]] = {}
        sides = ["Trainer", *cfgs]
        for name in sides if i % 2 else sides[::-1]:  # alternate which side goes first
            results[name] = (trainer_stage(plain, stage, steps, warmup, work / "trainer") if name == "Trainer"
                             else ours(cfgs[name], stage, warmup))
        rows.append((stage, results.pop("Trainer"), results))
        print(f"  measured {stage}", flush=True)
    return rows


def below_target(rows: list[tuple]) -> list[str]:
    """The stages where some variant of ours is under 1.2x the Trainer, in the loop or as a whole stage."""
    return [stage for stage, (r_b, w_b), ours_rows in rows
            if any(r_a / r_b < 1.2 or w_b / w_a < 1.2 for r_a, w_a in ours_rows.values())]


def print_table(rows: list[tuple], steps: int) -> None:
    step_s = lambda rate: BATCH * SEQ / rate  # noqa: E731
    header = (f"{'stage':<22} {'ours':<15} | {'tok/s':>8} {'Trainer':>8} {'ratio':>6} | {'whole s':>8} {'Trainer':>8} "
              f"{'ratio':>6} | {'fixed s':>7} {'Trainer':>8}")
    print(header)
    print("-" * len(header))
    for stage, (r_b, w_b), ours_rows in rows:
        for name, (r_a, w_a) in ours_rows.items():
            fixed_a, fixed_b = w_a - steps * step_s(r_a), w_b - steps * step_s(r_b)
            print(f"{stage:<22} {name:<15} | {r_a:>8,.0f} {r_b:>8,.0f} {r_a / r_b:>6.2f} | {w_a:>8.1f} {w_b:>8.1f} "
                  f"{w_b / w_a:>6.2f} | {fixed_a:>7.1f} {fixed_b:>8.1f}")
    for name in rows[0][2]:
        ratios = [ours_rows[name][0] / b[0] for _, b, ours_rows in rows]
        print(f"in-loop ratio {name}/Trainer: geometric mean {statistics.geometric_mean(ratios):.2f}, "
              f"lowest {min(ratios):.2f} (target >= 1.2 per stage)")
    print("whole-stage ratio = Trainer seconds / ours (>1: ours faster); fixed = whole - steps at the in-loop rate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 steps per stage instead of 40")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the in-loop rate")
    ap.add_argument("--fused", action="store_true", help="also ours with train.fused_loss=true")
    ap.add_argument("--compile", action="store_true", help="also ours with train.compile=true (compiles first)")
    args = ap.parse_args()
    steps = args.steps or (8 if args.quick else 40)
    if steps <= args.warmup:
        raise SystemExit(f"bench_vs_trainer: --steps must exceed --warmup ({args.warmup})")
    variants = [("ours", False, False)] + [v for v, on in ((("ours+fused", True, False), args.fused),
                                                          (("ours+compile", False, True), args.compile)) if on]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {steps} steps of {BATCH}x{SEQ} per stage, "
          f"first {args.warmup} left out of the in-loop rate", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench_vs_trainer_"))
    try:
        rows = measure(work, steps, args.warmup, variants)
        plain = experiment(work / "ours", steps)
        shares = {stage: time_shares(plain, stage, plain.out / "models") for stage in below_target(rows)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows, steps)
    print_shares(rows, shares)


if __name__ == "__main__":
    main()
