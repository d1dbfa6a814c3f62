"""THE training loop, shared by teachers, the control and the distilled student.

One `fit` call trains one model from a config and an Objective (plain CE for pretraining, CE + KD for
distillation). What it does, in order:

* data: the prepared train/dev token files, cut into windows (babyllama.data.windows). The windows form
  one sample stream: epoch ``e`` is a permutation of all windows (and, in 'random' mode, a fresh offset
  per window) drawn from ``numpy.random.default_rng([seed, e])``. Optimizer step ``s`` consumes samples
  ``[s*G, (s+1)*G)`` of that stream, G = batch_size x grad_accum x world_size, so the data position is
  just the step count and resume needs no sampler state. Rank ``r`` takes the r-th block of
  ``batch_size`` samples of every micro-step, a disjoint shard of the global batch.
* optimisation: fused AdamW (weight decay on >= 2-D weights only: matrices and embeddings, not biases or norm
  gains), linear warmup then the configured decay (babyllama.lm.schedule; cosine to 0 by default), gradient clipping, gradient accumulation, budget
  ``epochs`` or ``max_steps``, whichever ends first (a trailing partial global batch is dropped).
* precision: bf16 autocast on GPUs that support it, else fp16 with a GradScaler; fp32 on CPU (babyllama.runtime).
* evaluation: plain CE of the model (babyllama.lm.window_ce) on a fixed, seeded subset of non-overlapping dev windows, every
  ``eval_every`` steps, at each epoch end and at the end, whatever the objective (so a distilled
  student's dev loss compares with its teachers' and the control's).
* checkpoints: see babyllama.train.checkpoint. The final model is the best one by dev loss (as the
  paper's ``load_best_model_at_end``); training_summary.json records how it was made. ``save_at_words``
  also keeps the model as it is when training passes each listed word count (checkpoints/<name>/at_words/).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from babyllama import distributed as dist
from babyllama import identity, threads
from babyllama.config import AT_WORDS_DIR, Config, ModelConfig, TrainConfig
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.data.windows import (
    dev_subset,
    gather_windows,
    num_fixed_windows,
    num_random_windows,
    window_starts,
)
from babyllama.errors import UserError
from babyllama.io import read_json
from babyllama.lm.schedule import scheduler as lr_scheduler
from babyllama.lm.window_ce import window_ce
from babyllama.models import build_model, count_parameters
from babyllama.runtime import allow_tf32, autocast, resolve_precision, training_device
from babyllama.train import checkpoint as ckpt
from babyllama.train.metrics import MetricsLogger
from babyllama.train.objective import Batch, Objective

Windows = Literal["random", "fixed"]


# -- data ----------------------------------------------------------------------------------------------


class WindowStream:
    """The endless, seeded stream of training windows described in the module docstring."""

    def __init__(self, n_tokens: int, seq_len: int, seed: int, mode: Windows) -> None:
        self.seq_len = seq_len
        self.seed = seed
        self.random = mode == "random"
        self.n_windows = num_random_windows(n_tokens, seq_len) if self.random else num_fixed_windows(n_tokens, seq_len)
        self._cached: tuple[int, np.ndarray, np.ndarray | None] | None = None

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(self.n_windows)
            offsets = rng.integers(0, self.seq_len, size=self.n_windows) if self.random else None
            self._cached = (epoch, order, offsets)
        return self._cached[1], self._cached[2]

    def take(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Token starts and window ids (-1 for random offsets) of samples ``[first, first+count)``."""
        idx = np.arange(first, first + count, dtype=np.int64)
        starts = np.empty(count, dtype=np.int64)
        ids = np.full(count, -1, dtype=np.int64)
        epochs = idx // self.n_windows
        for e in np.unique(epochs):
            sel = epochs == e
            order, offsets = self._epoch(int(e))
            win = order[idx[sel] % self.n_windows]
            starts[sel] = window_starts(win, self.seq_len, None if offsets is None else offsets[idx[sel] % self.n_windows])
            if not self.random:
                ids[sel] = win
        return starts, ids


def words_per_token(manifest: dict) -> float:
    """Words per token of the train split, to report BabyLM words seen."""
    train = manifest["splits"]["train"]
    return float(train["words"]) / float(train["tokens"])


# -- plan the run ----------------------------------------------------------------------------------------


@dataclass
class RunPlan:
    """What one `fit` call will do, decided before any weight exists: data, budget, identity, where."""

    cfg: Config
    model_cfg: ModelConfig
    mode: Windows
    device: torch.device
    world: int
    rank: int
    main: bool
    global_batch: int
    total_steps: int
    stream: WindowStream
    train_tokens: np.ndarray
    dev_tokens: np.ndarray
    dev_indices: np.ndarray
    manifest: dict
    words_per_token: float
    components: dict  # the training identity (babyllama.identity), hashed into config_hash
    config_hash: str
    data_hash: str

    @property
    def train(self) -> TrainConfig:
        return self.model_cfg.train

    @property
    def seq_len(self) -> int:
        return self.cfg.data.seq_len

    @property
    def ck_dir(self) -> Path:
        return self.cfg.checkpoint_dir(self.model_cfg.name)

    @property
    def tokenizer_dir(self) -> Path:
        return self.cfg.data_dir / self.manifest["tokenizer"]

    def micro_batch(self, step: int, micro: int, step_hash: hashlib._Hash) -> Batch:
        """This rank's share of micro-step ``micro`` of optimizer step ``step`` (see the module docstring);
        its tokens are added to ``step_hash``."""
        bsz = self.train.batch_size
        first = step * self.global_batch + (micro * self.world + self.rank) * bsz
        starts, ids = self.stream.take(first, bsz)
        tokens = gather_windows(self.train_tokens, starts, self.seq_len)
        step_hash.update(tokens.tobytes())
        x = torch.from_numpy(tokens)
        epochs = torch.arange(first, first + bsz, dtype=torch.int64) // self.stream.n_windows
        return Batch(input_ids=x.to(self.device, non_blocking=True), window_ids=torch.from_numpy(ids), epochs=epochs)

    def is_epoch_end(self, done: int) -> bool:
        n = self.stream.n_windows
        return done * self.global_batch // n > (done - 1) * self.global_batch // n

    def evaluates_at(self, done: int) -> bool:
        tcfg = self.train
        return bool(tcfg.eval_every and done % tcfg.eval_every == 0) or self.is_epoch_end(done) or done == self.total_steps

    def saves_at(self, done: int) -> bool:
        return self.evaluates_at(done) or bool(self.train.save_every and done % self.train.save_every == 0)

    def words_passed(self, done: int) -> list[float]:
        """The train.save_at_words counts that step ``done`` passed."""
        before = (done - 1) * self.global_batch * self.seq_len * self.words_per_token
        after = done * self.global_batch * self.seq_len * self.words_per_token
        return [w for w in self.train.save_at_words if before < w <= after]


def plan_run(cfg: Config, model_cfg: ModelConfig, objective: Objective, mode: Windows, device: torch.device) -> RunPlan:
    """Read the prepared data and work out the budget and the run's identity (UserError if impossible)."""
    tcfg = model_cfg.train
    world, seq_len = dist.world_size(), cfg.data.seq_len
    global_batch = tcfg.batch_size * tcfg.grad_accum * world
    manifest = read_manifest(cfg.data_dir)
    data_hash = identity.data_identity(cfg.data_dir)
    train_tokens, dev_tokens = load_tokens(cfg.data_dir, "train"), load_tokens(cfg.data_dir, "dev")
    stream = WindowStream(len(train_tokens), seq_len, identity.model_seed(cfg, model_cfg), mode)
    if stream.n_windows < global_batch:
        raise UserError(
            f"model {model_cfg.name!r}: the train split has {stream.n_windows} windows of {seq_len} tokens, fewer than one "
            f"global batch ({tcfg.batch_size} x grad_accum {tcfg.grad_accum} x {world} processes); "
            "lower train.batch_size or use more data"
        )
    total_steps = math.floor(tcfg.epochs * stream.n_windows / global_batch)
    if tcfg.max_steps is not None:
        total_steps = min(total_steps, tcfg.max_steps)
    dev_indices = dev_subset(num_fixed_windows(len(dev_tokens), seq_len), tcfg.eval_windows, cfg.seed)
    if len(dev_indices) == 0:
        raise UserError(f"{cfg.data_dir}: the dev split is shorter than one window of {seq_len} tokens")
    components = identity.training_components(cfg, model_cfg, objective.fingerprint(), mode)
    return RunPlan(cfg=cfg, model_cfg=model_cfg, mode=mode, device=device, world=world, rank=dist.rank(),
                   main=dist.is_main_process(), global_batch=global_batch, total_steps=max(total_steps, 1),
                   stream=stream, train_tokens=train_tokens, dev_tokens=dev_tokens, dev_indices=dev_indices,
                   manifest=manifest, words_per_token=words_per_token(manifest), components=components,
                   config_hash=identity.config_hash(components), data_hash=data_hash)


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
    scaler: torch.amp.GradScaler | None
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
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    objective.setup(device, dtype)  # before RNG restore: a fresh and a resumed run see the same streams
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        if scaler is not None and state.scaler:
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
        # Set on the device when a loss (or, without a GradScaler, which skips such steps itself, a gradient)
        # is not finite; read where the loop syncs anyway, before anything is logged as good or saved.
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


def train_step(run: RunPlan, opt: Optimisation, objective: Objective, state: ckpt.TrainingState, meter: Meter) -> torch.Tensor:
    """Optimizer step ``state.step`` over ``grad_accum`` micro-batches (gradients synced on the last);
    advances the state's step and data-stream hash, returns the grad norm."""
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
                loss, extras = objective.loss(opt.net, batch)
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        meter.add(loss, extras)
    if scaler is not None:
        scaler.unscale_(opt.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(opt.model.parameters(), run.train.grad_clip, foreach=True)
    if scaler is None:
        meter.diverged |= ~torch.isfinite(grad_norm)
    if scaler is not None:
        scaler.step(opt.optimizer)
        scaler.update()
    else:
        opt.optimizer.step()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)
    meter.steps += 1
    state.step, state.stream_hash = step + 1, step_hash.hexdigest()
    return grad_norm


# -- log, evaluate, save ---------------------------------------------------------------------------------


def log_line(run: RunPlan, opt: Optimisation, state: ckpt.TrainingState, meter: Meter, grad_norm: torch.Tensor) -> dict:
    """The metrics.jsonl training line after ``state.step`` steps (averaged since the previous one)."""
    steps, done = meter.steps, state.step
    means, elapsed = meter.mean_and_reset(run.train.grad_accum * run.world)
    samples = done * run.global_batch
    tokens = samples * run.seq_len
    return {
        "step": done,
        "epoch": samples / run.stream.n_windows,
        "loss": means.pop("loss"),
        "lr": opt.scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm),
        "tokens_per_s": steps * run.global_batch * run.seq_len / max(elapsed, 1e-9),
        "tokens_seen": tokens,
        "words_seen": tokens * run.words_per_token,
        "stream_hash": state.stream_hash[:16],
        **means,
    }


def evaluate_and_save(run: RunPlan, opt: Optimisation, state: ckpt.TrainingState, log: MetricsLogger, meter: Meter,
                      done: int, last_saved: int, wall: Callable[[], float],
                      on_checkpoint: Callable[[Path, int], None] | None) -> bool:
    """After step ``done``: dev loss when it is due (and a checkpoint with it), else a checkpoint when due;
    whether it saved. A non-finite dev loss stops training (nothing diverged is saved)."""
    tcfg = run.train
    if run.evaluates_at(done):
        dev = window_ce(opt.model, run.dev_tokens, run.dev_indices, run.seq_len, tcfg.batch_size, dtype=opt.dtype,
                        sharded=True)
        improved = state.best_dev_loss is None or dev < state.best_dev_loss
        if improved:
            state.best_dev_loss, state.best_step = dev, done
        log.log({"step": done, "epoch": done * run.global_batch / run.stream.n_windows, "dev_loss": dev,
                 "best_dev_loss": state.best_dev_loss})
        if not math.isfinite(dev):
            meter.diverged.fill_(True)
            _stop_if_diverged(meter.diverged, run.model_cfg.name, done, tcfg.lr, run.ck_dir, last_saved)
        save(run, opt, state, done, dev, improved, wall(), on_checkpoint)
        return True
    if run.saves_at(done):
        save(run, opt, state, done, None, False, wall(), on_checkpoint)
        return True
    return False


def save_at_words(run: RunPlan, model: torch.nn.Module, done: int) -> None:
    """Rank 0: keep an HF model folder for every train.save_at_words count that step ``done`` passed
    (learning curves; checkpoints/<name>/at_words/<words>/)."""
    if not run.main:
        return
    after = done * run.global_batch * run.seq_len * run.words_per_token
    for words in run.words_passed(done):
        ckpt.save_checkpoint(run.ck_dir / AT_WORDS_DIR / str(int(words)), model, run.tokenizer_dir, None,
                             {"step": done, "words_target": words, "words_seen": after})


def save(run: RunPlan, opt: Optimisation, state: ckpt.TrainingState, step: int, dev: float | None, improved: bool,
         wall_time_s: float, on_checkpoint: Callable[[Path, int], None] | None) -> None:
    """Save checkpoints/<name>/last (and best first, when ``improved``) on rank 0; every rank takes part."""
    rng_states = dist.all_gather_objects(ckpt.capture_rng())
    ck_dir = run.ck_dir
    if run.main:
        info = {"step": step, "dev_loss": dev, "config_hash": run.config_hash, "data_hash": run.data_hash,
                "wall_time_s": wall_time_s}
        if improved:  # best first: a kill between the two saves then only repeats work on resume
            ckpt.save_checkpoint(ck_dir / "best", opt.model, run.tokenizer_dir, None, info)
        state.step, state.wall_time_s, state.rng = step, wall_time_s, rng_states
        state.optimizer, state.scheduler = opt.optimizer.state_dict(), opt.scheduler.state_dict()
        state.scaler = opt.scaler.state_dict() if opt.scaler is not None else {}
        ckpt.save_checkpoint(ck_dir / "last", opt.model, run.tokenizer_dir, state, info)
    dist.barrier()
    if run.main and on_checkpoint is not None:
        on_checkpoint(ck_dir / "last", step)


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
    t_start, wall_before = time.perf_counter(), state.wall_time_s

    def wall() -> float:
        return wall_before + (time.perf_counter() - t_start)

    meter, last_saved = Meter(device), state.step
    while state.step < run.total_steps:
        grad_norm = train_step(run, opt, objective, state, meter)
        done = state.step
        log.advance()
        if done % run.train.log_every == 0 or run.saves_at(done) or run.words_passed(done):
            _stop_if_diverged(meter.diverged, run.model_cfg.name, done, run.train.lr, run.ck_dir, last_saved)
        save_at_words(run, opt.model, done)
        if done % run.train.log_every == 0 or done == run.total_steps:
            log.log(log_line(run, opt, state, meter, grad_norm))
        if evaluate_and_save(run, opt, state, log, meter, done, last_saved, wall, on_checkpoint):
            last_saved = done
    log.close()
    if run.main:
        publish(run, opt.model, objective, state, description)
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


def _stop_if_diverged(diverged: torch.Tensor, name: str, step: int, lr: float, ck_dir: Path, last_saved: int) -> None:
    """UserError on every rank once any rank saw a non-finite loss: nothing NaN is saved or published."""
    if dist.all_reduce_sum(diverged.float().reshape(1)).item() == 0:
        return
    kept = f"the last good checkpoint ({ck_dir / 'last'}, step {last_saved}) is kept" if last_saved else "no checkpoint was saved"
    raise UserError(f"model {name!r}: the loss became NaN or infinite by step {step} (train.lr {lr:g} too high? "
                    f"bad data?); training stopped, {kept} and no model was published")



# -- publish ---------------------------------------------------------------------------------------------


def publish(run: RunPlan, model: torch.nn.Module, objective: Objective, state: ckpt.TrainingState, description: str) -> None:
    """Copy the best checkpoint to models/<name>/ with metrics.jsonl and training_summary.json, atomically."""
    tokens = run.total_steps * run.global_batch * run.seq_len
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
        "tokens_seen": tokens,
        "words_seen": tokens * run.words_per_token,
        "epochs_seen": run.total_steps * run.global_batch / run.stream.n_windows,
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
