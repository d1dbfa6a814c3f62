"""THE training loop, shared by teachers, the control and the distilled student.

One `fit` call trains one model from a config and an Objective (plain CE for pretraining, CE + KD for
distillation). What it does, in order:

* plan (babyllama.train.plan): the prepared train/dev token files, cut into windows (babyllama.data.windows)
  and read as one seeded sample stream; optimizer step ``s`` consumes samples ``[s*G, (s+1)*G)`` of it,
  G = batch_size x grad_accum x world_size, so the data position is just the step count and resume needs
  no sampler state. The plan's ``Cadence`` owns the words-per-step arithmetic and what is due after a step.
* optimisation: fused AdamW (weight decay on >= 2-D weights only: matrices and embeddings, not biases or norm
  gains), linear warmup then the configured decay (babyllama.lm.schedule; cosine to 0 by default), gradient
  clipping, gradient accumulation, budget ``epochs`` or ``max_steps``, whichever ends first (a trailing
  partial global batch is dropped).
* precision: bf16 autocast on GPUs that support it, else fp16; fp32 on CPU (babyllama.runtime). The
  GradScaler always exists and is enabled for fp16 only (disabled, it passes everything through).
* evaluation: plain CE of the model (babyllama.lm.window_ce) on a fixed, seeded subset of non-overlapping dev
  windows, every ``eval_every`` steps, at each epoch end and at the end, whatever the objective (so a
  distilled student's dev loss compares with its teachers' and the control's).
* checkpoints: see babyllama.train.checkpoint. The final model is the best one by dev loss (as the
  paper's ``load_best_model_at_end``); training_summary.json records how it was made. ``save_at_words``
  also keeps the model as it is when training passes each listed word count (checkpoints/<name>/at_words/).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from babyllama import distributed as dist
from babyllama import identity, threads
from babyllama.config import AT_WORDS_DIR, Config, ModelConfig
from babyllama.errors import UserError
from babyllama.io import read_json
from babyllama.lm.schedule import scheduler as lr_scheduler
from babyllama.lm.window_ce import window_ce
from babyllama.models import build_model, count_parameters
from babyllama.runtime import allow_tf32, autocast, resolve_precision, training_device
from babyllama.train import checkpoint as ckpt
from babyllama.train.metrics import MetricsLogger
from babyllama.train.objective import Objective
from babyllama.train.plan import RunPlan, Windows, plan_run

# -- restore or start ------------------------------------------------------------------------------------


def restore_or_start(run: RunPlan, resume: bool) -> tuple[ckpt.TrainingState | None, Path | None]:
    """The state to resume from checkpoints/<name>/last (checked against this run), or (None, None)."""
    ck_dir = run.ck_dir
    if run.main:
        ckpt.remove_stale_temporaries(ck_dir)
        for kind in ("last", "best"):
            ckpt.find(ck_dir / kind, restore=True)
    dist.barrier()
    last_dir = ckpt.find(ck_dir / "last")
    if last_dir is None:
        if resume:
            raise UserError(f"nothing to resume for model {run.model_cfg.name!r}: no checkpoint in {ck_dir / 'last'}")
        return None, None
    state = ckpt.TrainingState.read(last_dir)
    state.check_resumable(run.components, run.config_hash, run.data_hash, run.world, last_dir)
    return state, last_dir


# -- build optimisation ----------------------------------------------------------------------------------


@dataclass
class Optimisation:
    """The model and what updates it: optimiser, schedule, precision, the DDP / compiled wrapper."""

    model: torch.nn.Module  # the plain HF model: saved, evaluated
    net: torch.nn.Module  # what the objective calls: the model, or its DDP / torch.compile wrapper
    ddp: DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # enabled for fp16 only; disabled, it passes losses and steps through
    dtype: torch.dtype | None  # the autocast dtype; None for fp32


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def build_optimisation(run: RunPlan, objective: Objective, state: ckpt.TrainingState | None,
                       last_dir: Path | None) -> Optimisation:
    """Build (or restore) the model, optimiser, schedule and scaler; set the objective up.

    The order is part of the result: the model is initialised right after seeding, and the resumed RNG
    states are restored last, so nothing here shifts the random streams of a fresh or a resumed run.
    """
    tcfg, device = run.train, run.device
    torch.manual_seed(identity.model_seed(run.cfg, run.model_cfg))
    model = build_model(run.model_cfg, run.manifest["vocab_size"], run.manifest["special_tokens"]).to(device)
    if last_dir is not None:
        ckpt.load_weights(model, last_dir)
    model.train()
    dtype, use_scaler = resolve_precision(tcfg.precision, device)
    # The fused kernel is ~10x faster than the default per-tensor loop on CPU (see benchmarks/bench_train.py).
    optimizer = torch.optim.AdamW(
        _decay_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tcfg.adam_betas, eps=tcfg.adam_eps,
        fused=device.type in ("cpu", "cuda"),
    )
    scheduler = lr_scheduler(optimizer, kind=tcfg.schedule, total=run.total_steps, warmup=tcfg.warmup_steps,
                             min_lr_ratio=tcfg.min_lr_ratio, decay_fraction=tcfg.decay_fraction)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    objective.setup(device, dtype)  # before RNG restore: a fresh and a resumed run see the same streams
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if state.scaler:  # {} from a run without fp16 (and from checkpoints written before the scaler always existed)
            scaler.load_state_dict(state.scaler)
        ckpt.restore_rng(state.rng[run.rank])  # last, so nothing above shifts the resumed random streams
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if run.world > 1 else None
    net: torch.nn.Module = ddp if ddp is not None else model
    if tcfg.compile:
        net = torch.compile(net)
    return Optimisation(model, net, ddp, optimizer, scheduler, scaler, dtype)


# -- one training step -----------------------------------------------------------------------------------


class Meter:
    """Loss and objective extras summed on the device between two log lines (no sync per micro-step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.extras: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.since = time.perf_counter()
        # Set on the device when a loss (or, without an enabled GradScaler, which skips such steps itself, a
        # gradient) is not finite; read where the loop syncs anyway, before anything is logged as good or saved.
        self.diverged = torch.zeros((), dtype=torch.bool, device=device)

    def add(self, loss: torch.Tensor, extras: dict) -> None:
        self.loss += loss.detach().float()
        self.diverged |= ~torch.isfinite(loss.detach())
        for k, v in extras.items():
            v = torch.as_tensor(v, device=self.device).detach().float()
            self.extras[k] = self.extras[k] + v if k in self.extras else v

    def mean_and_reset(self, per_step: int) -> tuple[dict[str, float], float]:
        """({'loss': ..., extras ...} averaged over micro-steps and ranks, seconds since the last reset)."""
        sums = torch.stack([self.loss, *self.extras.values()]) / (self.steps * per_step)
        values = dist.all_reduce_sum(sums).tolist()
        means = dict(zip(["loss", *self.extras], values, strict=True))
        elapsed = time.perf_counter() - self.since
        self.loss.zero_()
        self.extras.clear()
        self.since, self.steps = time.perf_counter(), 0
        return means, elapsed


@dataclass
class Session:
    """One `fit` call once planned and built: what every step, log line, evaluation and save works on.

    ``last_saved`` is the step of the last checkpoint (named when a diverged run stops); ``wall_before``
    the training seconds of the run this one resumes.
    """

    run: RunPlan
    opt: Optimisation
    objective: Objective
    state: ckpt.TrainingState
    log: MetricsLogger
    on_checkpoint: Callable[[Path, int], None] | None
    meter: Meter
    last_saved: int
    wall_before: float
    started: float = field(default_factory=time.perf_counter)

    def wall(self) -> float:
        """Training seconds so far, across resumes."""
        return self.wall_before + (time.perf_counter() - self.started)

    def stop_if_diverged(self, done: int) -> None:
        """UserError on every rank once any rank saw a non-finite loss: nothing NaN is saved or published."""
        if dist.all_reduce_sum(self.meter.diverged.float().reshape(1)).item() == 0:
            return
        run = self.run
        kept = (f"the last good checkpoint ({run.ck_dir / 'last'}, step {self.last_saved}) is kept" if self.last_saved
                else "no checkpoint was saved")
        raise UserError(f"model {run.model_cfg.name!r}: the loss became NaN or infinite by step {done} (train.lr "
                        f"{run.train.lr:g} too high? bad data?); training stopped, {kept} and no model was published")


def train_step(s: Session) -> torch.Tensor:
    """Optimizer step ``state.step`` over ``grad_accum`` micro-batches (gradients synced on the last);
    advances the state's step and data-stream hash, returns the grad norm."""
    run, opt, state = s.run, s.opt, s.state
    accum, scaler, step = run.train.grad_accum, opt.scaler, state.step
    # A hash chain over every batch this rank has trained on, in order (h_s = sha256(h_{s-1} + step s's
    # tokens)): two models with equal stream hashes at a step saw identical data up to it, which is how
    # the report tells that the student and the control shared one data stream.
    step_hash = hashlib.sha256(bytes.fromhex(state.stream_hash))
    for micro in range(accum):
        batch = run.micro_batch(step, micro, step_hash)
        sync = opt.ddp is None or micro == accum - 1
        with contextlib.nullcontext() if sync else opt.ddp.no_sync():
            with autocast(run.device, opt.dtype):
                loss, extras = s.objective.loss(opt.net, batch)
            scaler.scale(loss / accum).backward()
        s.meter.add(loss, extras)
    scaler.unscale_(opt.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.model.parameters(), run.train.grad_clip, foreach=True)
    if not scaler.is_enabled():  # an enabled scaler skips a step with non-finite gradients and lowers its scale
        s.meter.diverged |= ~torch.isfinite(grad_norm)
    scaler.step(opt.optimizer)
    scaler.update()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)
    s.meter.steps += 1
    state.step, state.stream_hash = step + 1, step_hash.hexdigest()
    return grad_norm


# -- log, evaluate, save ---------------------------------------------------------------------------------


def after_step(s: Session, grad_norm: torch.Tensor) -> None:
    """Everything due after an optimizer step, in order: the divergence check before anything leaves the
    device, the models kept at word counts, the log line, then dev loss and checkpoints."""
    done, cadence = s.state.step, s.run.cadence
    s.log.advance()
    if cadence.syncs_at(done):
        s.stop_if_diverged(done)
    save_at_words(s.run, s.opt.model, done)
    if cadence.logs_at(done):
        s.log.log(log_line(s, grad_norm))
    if evaluate_and_save(s, done):
        s.last_saved = done


def log_line(s: Session, grad_norm: torch.Tensor) -> dict:
    """The metrics.jsonl training line after ``state.step`` steps (averaged since the previous one)."""
    run, cadence = s.run, s.run.cadence
    steps, done = s.meter.steps, s.state.step
    means, elapsed = s.meter.mean_and_reset(run.train.grad_accum * run.world)
    return {
        "step": done,
        "epoch": cadence.epoch(done),
        "loss": means.pop("loss"),
        "lr": s.opt.scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "tokens_per_s": cadence.tokens(steps) / max(elapsed, 1e-9),
        "tokens_seen": cadence.tokens(done),
        "words_seen": cadence.words(done),
        "stream_hash": s.state.stream_hash[:16],
        **means,
    }


def evaluate_and_save(s: Session, done: int) -> bool:
    """After step ``done``: dev loss when it is due (and a checkpoint with it), else a checkpoint when due;
    whether it saved. A non-finite dev loss stops training (nothing diverged is saved)."""
    run, state = s.run, s.state
    if run.cadence.evaluates_at(done):
        dev = window_ce(s.opt.model, run.dev_tokens, run.dev_indices, run.seq_len, run.train.batch_size,
                        dtype=s.opt.dtype, sharded=True)
        improved = state.best_dev_loss is None or dev < state.best_dev_loss
        if improved:
            state.best_dev_loss, state.best_step = dev, done
        s.log.log({"step": done, "epoch": run.cadence.epoch(done), "dev_loss": dev, "best_dev_loss": state.best_dev_loss})
        if not math.isfinite(dev):
            s.meter.diverged.fill_(True)
            s.stop_if_diverged(done)
        save(s, done, dev, improved)
        return True
    if run.cadence.saves_at(done):
        save(s, done, None, False)
        return True
    return False


def save_at_words(run: RunPlan, model: torch.nn.Module, done: int) -> None:
    """Rank 0: keep an HF model folder for every train.save_at_words count that step ``done`` passed
    (learning curves; checkpoints/<name>/at_words/<words>/)."""
    if not run.main:
        return
    for words in run.cadence.words_passed(done):
        ckpt.save_checkpoint(run.ck_dir / AT_WORDS_DIR / str(int(words)), model, run.tokenizer_dir, None,
                             {"step": done, "words_target": words, "words_seen": run.cadence.words(done)})


def save(s: Session, step: int, dev: float | None, improved: bool) -> None:
    """Save checkpoints/<name>/last (and best first, when ``improved``) on rank 0; every rank takes part."""
    run, opt, state = s.run, s.opt, s.state
    rng_states = dist.all_gather_objects(ckpt.capture_rng())
    ck_dir, wall_time_s = run.ck_dir, s.wall()
    if run.main:
        info = {"step": step, "dev_loss": dev, "config_hash": run.config_hash, "data_hash": run.data_hash,
                "wall_time_s": wall_time_s}
        if improved:  # best first: a kill between the two saves then only repeats work on resume
            ckpt.save_checkpoint(ck_dir / "best", opt.model, run.tokenizer_dir, None, info)
        state.step, state.wall_time_s, state.rng = step, wall_time_s, rng_states
        state.optimizer, state.scheduler = opt.optimizer.state_dict(), opt.scheduler.state_dict()
        state.scaler = opt.scaler.state_dict()  # {} when disabled, as checkpoints have always held then
        ckpt.save_checkpoint(ck_dir / "last", opt.model, run.tokenizer_dir, state, info)
    dist.barrier()
    if run.main and s.on_checkpoint is not None:
        s.on_checkpoint(ck_dir / "last", step)


# -- the loop ------------------------------------------------------------------------------------------


def fit(
    cfg: Config,
    model_cfg: ModelConfig,
    objective: Objective,
    *,
    resume: bool = False,
    windows: Windows | None = None,
    description: str = "",
    on_checkpoint: Callable[[Path, int], None] | None = None,
) -> Path:
    """Train ``model_cfg`` with ``objective``; return the final HF model folder <out_dir>/models/<name>.

    Resumes automatically from checkpoints/<name>/last when it exists (``resume=True`` makes that
    required). ``windows`` overrides the model's train.windows (the teacher-logit cache needs 'fixed').
    ``on_checkpoint(path, step)`` is called on rank 0 after each saved checkpoint.
    """
    device = training_device()
    allow_tf32(device)
    initialised_here = dist.is_distributed() and not torch.distributed.is_initialized()
    dist.init(device)
    run = plan_run(cfg, model_cfg, objective, windows or model_cfg.train.windows, device)
    resumed, last_dir = restore_or_start(run, resume)
    opt = build_optimisation(run, objective, resumed, last_dir)
    state = resumed or ckpt.TrainingState(config_hash=run.config_hash, components=run.components,
                                          data_hash=run.data_hash, world_size=run.world)
    log = _open_log(run, opt, state.step, description, objective)
    s = Session(run=run, opt=opt, objective=objective, state=state, log=log, on_checkpoint=on_checkpoint,
                meter=Meter(device), last_saved=state.step, wall_before=state.wall_time_s)
    while state.step < run.total_steps:
        after_step(s, train_step(s))
    log.close()
    if run.main:
        publish(run, opt.model, objective, state, description)
    # The DDP reducer holds the process group and the gloo work that references Python tensors: free it while
    # the group lives. Freed after the group is destroyed, gloo's destructor joins a worker thread that waits
    # for the GIL this thread holds (a hang at the end of a torchrun job).
    del s, opt
    if dist.is_distributed():  # a full collection costs ~0.2 s in a big process: only where a reducer is
        gc.collect()
    dist.barrier()
    if initialised_here:
        torch.distributed.destroy_process_group()
    return cfg.model_dir(model_cfg.name)


def _open_log(run: RunPlan, opt: Optimisation, start_step: int, description: str, objective: Objective) -> MetricsLogger:
    stage = "distill" if objective.fingerprint().get("objective") == "distill" else "train"
    log = MetricsLogger(run.ck_dir / ckpt.METRICS_FILE, run.cfg.logging, enabled=run.main, total_steps=run.total_steps,
                        start_step=start_step, run_name=run.model_cfg.name, label=f"{run.model_cfg.name} {stage}",
                        description=description)
    if run.main and start_step == 0:
        log.log({"step": 0, "event": "start", "params": count_parameters(opt.model), "total_steps": run.total_steps,
                 "global_batch": run.global_batch, "windows": run.mode, "world_size": run.world,
                 "device": str(run.device), "precision": str(opt.dtype or "fp32")})
    return log


# -- publish ---------------------------------------------------------------------------------------------


def publish(run: RunPlan, model: torch.nn.Module, objective: Objective, state: ckpt.TrainingState, description: str) -> None:
    """Copy the best checkpoint to models/<name>/ with metrics.jsonl and training_summary.json, atomically."""
    cadence, steps = run.cadence, run.total_steps
    summary = {
        "name": run.model_cfg.name,
        "description": description,
        "config_hash": run.config_hash,
        "data_hash": run.data_hash,
        "objective": objective.fingerprint(),
        "windows": run.mode,
        "stream_hash": state.stream_hash,
        "steps": run.total_steps,
        "global_batch": run.global_batch,
        "world_size": run.world,
        "tokens_seen": cadence.tokens(steps),
        "words_seen": cadence.words(steps),
        "epochs_seen": cadence.epoch(steps),
        "params": count_parameters(model),
        "threads": threads.describe(),
    }
    ck_dir = run.ck_dir
    best_dir = ckpt.find(ck_dir / "best")
    if best_dir is None:
        raise UserError(f"no best checkpoint in {ck_dir}; delete {ck_dir} and train again")
    # One round of advice: without its best checkpoint the run cannot publish, so the whole folder goes.
    best = ckpt.verify(best_dir, hint=f"delete {ck_dir} and train again (the best checkpoint cannot be rebuilt)")
    last = read_json(ck_dir / "last" / ckpt.MANIFEST_FILE)
    summary = {**summary, "best_dev_loss": best["dev_loss"], "best_step": best["step"], "final_dev_loss": last["dev_loss"],
               "selected": "best", "wall_time_s": last["wall_time_s"]}
    extra = {ckpt.METRICS_FILE: (ck_dir / ckpt.METRICS_FILE).read_bytes(),
             identity.SUMMARY_FILE: (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()}
    ckpt.copy_checkpoint(best_dir, run.cfg.model_dir(run.model_cfg.name), extra=extra)
