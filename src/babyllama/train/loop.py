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
  gains), linear warmup then cosine decay to 0, gradient clipping, gradient accumulation, budget
  ``epochs`` or ``max_steps``, whichever ends first (a trailing partial global batch is dropped).
* precision: bf16 autocast on GPUs that support it, else fp16 with a GradScaler; fp32 on CPU.
* evaluation: plain CE of the model on a fixed, seeded subset of non-overlapping dev windows, every
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
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from transformers import get_cosine_schedule_with_warmup

from babyllama import threads
from babyllama.config import Config, ModelConfig
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.data.windows import (
    dev_subset,
    gather_windows,
    num_fixed_windows,
    num_random_windows,
    window_starts,
)
from babyllama.errors import UserError
from babyllama.io import read_json, stable_hash
from babyllama.models import build_model, count_parameters
from babyllama.train import checkpoint as ckpt
from babyllama.train import distributed as dist
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


# -- precision -----------------------------------------------------------------------------------------


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


# -- evaluation ----------------------------------------------------------------------------------------


@torch.no_grad()
def dev_loss(
    model: torch.nn.Module,
    tokens: np.ndarray,
    indices: np.ndarray,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None,
) -> float:
    """Mean next-token CE over the fixed dev windows ``indices`` (sharded over ranks, summed back)."""
    was_training = model.training
    model.eval()
    shard = indices[dist.rank() :: dist.world_size()]
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(shard), batch_size):
        x = torch.from_numpy(gather_windows(tokens, window_starts(shard[i : i + batch_size], seq_len), seq_len)).to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(input_ids=x, labels=x, use_cache=False)
        n = x.shape[0] * (x.shape[1] - 1)
        total[0] += out.loss.double() * n
        total[1] += n
    dist.all_reduce_sum(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


# -- the loop ------------------------------------------------------------------------------------------


def _decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def _check_resume(state: dict, components: dict, config_hash: str, data_hash: str, where: Path) -> None:
    if state.get("data_hash") != data_hash:
        raise UserError(
            f"cannot resume {where}: the prepared data changed (data_hash {str(state.get('data_hash'))[:12]} -> "
            f"{data_hash[:12]}); delete {where.parent} to start over"
        )
    if state.get("config_hash") != config_hash:
        changes = ckpt.describe_changes(state.get("components", {}), components)
        raise UserError(f"cannot resume {where}: the config changed ({changes}); revert it or delete {where.parent} to start over")
    if state.get("world_size") != dist.world_size():
        raise UserError(
            f"cannot resume {where}: it was trained with {state.get('world_size')} processes, now {dist.world_size()} "
            f"(the global batch would change); use the same torchrun --nproc_per_node or delete {where.parent}"
        )


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
    tcfg = model_cfg.train
    mode: Windows = windows or tcfg.windows
    device = dist.training_device()
    if device.type == "cuda":  # TF32 for whatever matmuls stay in fp32 under autocast
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    initialised_here = dist.is_distributed() and not torch.distributed.is_initialized()
    dist.init(device)
    world, rank, main = dist.world_size(), dist.rank(), dist.is_main_process()
    seq_len, bsz, accum = cfg.data.seq_len, tcfg.batch_size, tcfg.grad_accum
    global_batch = bsz * accum * world

    # data and run identity
    manifest = read_manifest(cfg.data_dir)
    data_hash = ckpt.data_hash(cfg)
    tok_dir = cfg.data_dir / manifest["tokenizer"]
    train_tokens, dev_tokens = load_tokens(cfg.data_dir, "train"), load_tokens(cfg.data_dir, "dev")
    stream = WindowStream(len(train_tokens), seq_len, ckpt.model_seed(cfg, model_cfg), mode)
    if stream.n_windows < global_batch:
        raise UserError(
            f"model {model_cfg.name!r}: the train split has {stream.n_windows} windows of {seq_len} tokens, fewer than one "
            f"global batch ({bsz} x grad_accum {accum} x {world} processes); lower train.batch_size or use more data"
        )
    total_steps = math.floor(tcfg.epochs * stream.n_windows / global_batch)
    if tcfg.max_steps is not None:
        total_steps = min(total_steps, tcfg.max_steps)
    total_steps = max(total_steps, 1)
    dev_indices = dev_subset(num_fixed_windows(len(dev_tokens), seq_len), tcfg.eval_windows, cfg.seed)
    if len(dev_indices) == 0:
        raise UserError(f"{cfg.data_dir}: the dev split is shorter than one window of {seq_len} tokens")
    wpt = words_per_token(manifest)
    components = ckpt.run_components(cfg, model_cfg, objective.fingerprint(), mode)
    config_hash = stable_hash(components)

    ck_dir = cfg.checkpoint_dir(model_cfg.name)
    if main:
        ckpt.remove_stale_temporaries(ck_dir)
        for kind in ("last", "best"):
            ckpt.find(ck_dir / kind, restore=True)
    dist.barrier()
    last_dir = ckpt.find(ck_dir / "last")
    state = None
    if last_dir is not None:
        state = ckpt.load_state(last_dir)
        _check_resume(state, components, config_hash, data_hash, last_dir)
    elif resume:
        raise UserError(f"nothing to resume for model {model_cfg.name!r}: no checkpoint in {ck_dir / 'last'}")

    # model, optimiser, schedule
    torch.manual_seed(ckpt.model_seed(cfg, model_cfg))
    model = build_model(model_cfg, manifest["vocab_size"], manifest["special_tokens"]).to(device)
    if state is not None:
        ckpt.load_weights(model, last_dir)
    model.train()
    dtype, use_scaler = resolve_precision(tcfg.precision, device)
    # The fused kernel is ~10x faster than the default per-tensor loop on CPU (see benchmarks/bench_train.py).
    optimizer = torch.optim.AdamW(
        _decay_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tcfg.adam_betas, eps=tcfg.adam_eps,
        fused=device.type in ("cpu", "cuda"),
    )
    scheduler = get_cosine_schedule_with_warmup(optimizer, tcfg.warmup_steps, total_steps)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    objective.setup(device, dtype)  # before RNG restore: a fresh and a resumed run see the same streams
    start_step, best_loss, best_step, wall = 0, None, None, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_step, best_loss, best_step = state["step"], state["best_dev_loss"], state["best_step"]
        wall = state["wall_time_s"]
        ckpt.restore_rng(state["rng"][rank])  # last, so nothing above shifts the resumed random streams
    # A hash chain over every batch this rank has trained on, in order (h_s = sha256(h_{s-1} + step s's
    # tokens)): two models with equal stream hashes at a step saw identical data up to it, which is how
    # the report tells that the student and the control shared one data stream.
    stream_digest = bytes.fromhex(state.get("stream_hash", "")) if state is not None else b""

    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else None
    net: torch.nn.Module = ddp if ddp is not None else model
    if tcfg.compile:
        net = torch.compile(net)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def micro_batch(step: int, micro: int, step_hash: Any) -> Batch:
        starts, ids = stream.take(step * global_batch + (micro * world + rank) * bsz, bsz)
        tokens = gather_windows(train_tokens, starts, seq_len)
        step_hash.update(tokens.tobytes())
        x = torch.from_numpy(tokens)
        return Batch(input_ids=x.to(device, non_blocking=True), window_ids=torch.from_numpy(ids))

    log = MetricsLogger(
        ck_dir / ckpt.METRICS_FILE,
        cfg.logging,
        enabled=main,
        total_steps=total_steps,
        start_step=start_step,
        run_name=model_cfg.name,
        description=description,
    )
    if main and start_step == 0:
        n_params = count_parameters(model)
        log.log({"step": 0, "event": "start", "params": n_params, "total_steps": total_steps, "global_batch": global_batch,
                 "windows": mode, "world_size": world, "device": str(device), "precision": str(dtype or "fp32")})

    def save(step: int, dev: float | None, improved: bool) -> None:
        rng_states = dist.all_gather_objects(ckpt.capture_rng())
        if main:
            elapsed = wall + (time.perf_counter() - t_start)
            info = {"step": step, "dev_loss": dev, "config_hash": config_hash, "data_hash": data_hash, "wall_time_s": elapsed}
            if improved:  # best first: a kill between the two saves then only repeats work on resume
                ckpt.save_checkpoint(ck_dir / "best", model, tok_dir, None, info)
            training_state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "rng": rng_states,
                "best_dev_loss": best_loss,
                "best_step": best_step,
                "wall_time_s": elapsed,
                "config_hash": config_hash,
                "components": components,
                "data_hash": data_hash,
                "world_size": world,
                "stream_hash": stream_digest.hex(),
            }
            ckpt.save_checkpoint(ck_dir / "last", model, tok_dir, training_state, info)
        dist.barrier()
        if main and on_checkpoint is not None:
            on_checkpoint(ck_dir / "last", step)

    t_start = time.perf_counter()
    t_log, steps_in_log = time.perf_counter(), 0
    loss_sum = torch.zeros((), device=device)
    extra_sums: dict[str, torch.Tensor] = {}
    grad_norm = torch.zeros(())
    # Set on the device when a loss (or, without a GradScaler, which skips such steps itself, a gradient)
    # is not finite; read where the loop syncs anyway, before anything is logged as good or saved.
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    last_saved = start_step
    for step in range(start_step, total_steps):
        step_hash = hashlib.sha256(stream_digest)
        for micro in range(accum):
            batch = micro_batch(step, micro, step_hash)
            sync = ddp is None or micro == accum - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                with autocast():
                    loss, extras = objective.loss(net, batch)
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss.detach().float()
            diverged |= ~torch.isfinite(loss.detach())
            for k, v in extras.items():
                v = torch.as_tensor(v, device=device).detach().float()
                extra_sums[k] = extra_sums[k] + v if k in extra_sums else v
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip, foreach=True)
        if scaler is None:
            diverged |= ~torch.isfinite(grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stream_digest = step_hash.digest()
        done, steps_in_log = step + 1, steps_in_log + 1
        log.advance()

        samples = done * global_batch
        epoch_end = samples // stream.n_windows > step * global_batch // stream.n_windows
        evaluate = (tcfg.eval_every and done % tcfg.eval_every == 0) or epoch_end or done == total_steps
        saving = evaluate or (tcfg.save_every and done % tcfg.save_every == 0)
        at_words = [w for w in tcfg.save_at_words if step * global_batch * seq_len * wpt < w <= samples * seq_len * wpt]
        if done % tcfg.log_every == 0 or saving or at_words:
            _stop_if_diverged(diverged, model_cfg.name, done, tcfg.lr, ck_dir, last_saved)
        if main:
            _save_at_words(tcfg.save_at_words, step * global_batch * seq_len * wpt, samples * seq_len * wpt,
                           ck_dir, model, tok_dir, done)
        if done % tcfg.log_every == 0 or done == total_steps:
            sums = torch.stack([loss_sum, *extra_sums.values()]) / (steps_in_log * accum * world)
            values = dist.all_reduce_sum(sums).tolist()
            elapsed = time.perf_counter() - t_log
            tokens = samples * seq_len
            record = {
                "step": done,
                "epoch": samples / stream.n_windows,
                "loss": values[0],
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": steps_in_log * global_batch * seq_len / max(elapsed, 1e-9),
                "tokens_seen": tokens,
                "words_seen": tokens * wpt,
                "stream_hash": stream_digest.hex()[:16],
                **dict(zip(extra_sums, values[1:], strict=True)),
            }
            log.log(record)
            loss_sum.zero_()
            extra_sums.clear()
            t_log, steps_in_log = time.perf_counter(), 0
        if evaluate:
            last_dev = dev_loss(model, dev_tokens, dev_indices, seq_len, bsz, device, dtype)
            improved = best_loss is None or last_dev < best_loss
            if improved:
                best_loss, best_step = last_dev, done
            log.log({"step": done, "epoch": samples / stream.n_windows, "dev_loss": last_dev, "best_dev_loss": best_loss})
            if not math.isfinite(last_dev):
                diverged.fill_(True)
                _stop_if_diverged(diverged, model_cfg.name, done, tcfg.lr, ck_dir, last_saved)
            save(done, last_dev, improved)
            last_saved = done
        elif saving:
            save(done, None, False)
            last_saved = done
    log.close()

    if main:
        summary = {
            "name": model_cfg.name,
            "description": description,
            "config_hash": config_hash,
            "data_hash": data_hash,
            "objective": objective.fingerprint(),
            "windows": mode,
            "stream_hash": stream_digest.hex(),
            "steps": total_steps,
            "global_batch": global_batch,
            "world_size": world,
            "tokens_seen": total_steps * global_batch * seq_len,
            "words_seen": total_steps * global_batch * seq_len * wpt,
            "epochs_seen": total_steps * global_batch / stream.n_windows,
            "params": count_parameters(model),
            "threads": threads.describe(),
        }
        _publish(ck_dir, cfg.model_dir(model_cfg.name), summary)
    dist.barrier()
    if initialised_here:
        torch.distributed.destroy_process_group()
    return cfg.model_dir(model_cfg.name)


def _stop_if_diverged(diverged: torch.Tensor, name: str, step: int, lr: float, ck_dir: Path, last_saved: int) -> None:
    """UserError on every rank once any rank saw a non-finite loss: nothing NaN is saved or published."""
    if dist.all_reduce_sum(diverged.float().reshape(1)).item() == 0:
        return
    kept = f"the last good checkpoint ({ck_dir / 'last'}, step {last_saved}) is kept" if last_saved else "no checkpoint was saved"
    raise UserError(f"model {name!r}: the loss became NaN or infinite by step {step} (train.lr {lr:g} too high? "
                    f"bad data?); training stopped, {kept} and no model was published")


AT_WORDS_DIR = "at_words"


def _save_at_words(targets: list[float], before: float, after: float, ck_dir: Path, model: torch.nn.Module,
                   tok_dir: Path, step: int) -> None:
    """Keep an HF model folder for every target word count this step passed (learning curves)."""
    for words in targets:
        if before < words <= after:
            ckpt.save_checkpoint(ck_dir / AT_WORDS_DIR / str(int(words)), model, tok_dir, None,
                                 {"step": step, "words_target": words, "words_seen": after})


def _publish(ck_dir: Path, out: Path, summary: dict) -> None:
    """Copy the best checkpoint to models/<name>/ with metrics.jsonl and training_summary.json, atomically."""
    best_dir = ckpt.find(ck_dir / "best")
    if best_dir is None:
        raise UserError(f"no best checkpoint in {ck_dir}; delete {ck_dir} and train again")
    best = ckpt.verify(best_dir)
    last = read_json(ck_dir / "last" / ckpt.MANIFEST_FILE)
    summary = {**summary, "best_dev_loss": best["dev_loss"], "best_step": best["step"], "final_dev_loss": last["dev_loss"],
               "selected": "best", "wall_time_s": last["wall_time_s"]}
    extra = {ckpt.METRICS_FILE: (ck_dir / ckpt.METRICS_FILE).read_bytes(),
             ckpt.SUMMARY_FILE: (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode()}
    ckpt.copy_checkpoint(best_dir, out, extra=extra)
