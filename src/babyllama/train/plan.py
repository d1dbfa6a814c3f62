"""What one `fit` call will do, decided before any weight exists: the sample stream, the budget and the cadence.

The loop (babyllama.train.loop) asks these objects and never does the arithmetic itself:

* ``WindowStream``: epoch ``e`` is a permutation of all windows (and, in 'random' mode, a fresh offset per
  window) drawn from ``numpy.random.default_rng([seed, e])``; optimizer step ``s`` consumes samples
  ``[s*G, (s+1)*G)``, G = the global batch, so the data position is just the step count.
* ``Cadence``: how far step ``done`` has gone (samples, tokens, BabyLM words, epochs) and what is due after
  it (a log line, a dev loss, a checkpoint, a save_at_words model). The one owner of that arithmetic: the
  log line, the checkpoints kept at word counts and the training summary all read it here.
* ``RunPlan``: the above plus the data, the device and the run's identity (config and data hashes).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from babyllama import distributed as dist
from babyllama import identity
from babyllama.config import Config, ModelConfig, TrainConfig
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.data.windows import (
    dev_subset,
    gather_windows,
    num_fixed_windows,
    num_random_windows,
    window_starts,
)
from babyllama.errors import UserError
from babyllama.train.objective import Batch, Objective

Windows = Literal["random", "fixed"]


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


@dataclass(frozen=True)
class Cadence:
    """Where optimizer step ``done`` stands and what is due after it; every count is a function of the step."""

    train: TrainConfig
    global_batch: int
    seq_len: int
    n_windows: int
    words_per_token: float
    total_steps: int

    def samples(self, done: int) -> int:
        return done * self.global_batch

    def tokens(self, done: int) -> int:
        return self.samples(done) * self.seq_len

    def words(self, done: int) -> float:
        """BabyLM words seen after ``done`` steps (tokens x the train split's words per token)."""
        return self.tokens(done) * self.words_per_token

    def epoch(self, done: int) -> float:
        return self.samples(done) / self.n_windows

    def is_epoch_end(self, done: int) -> bool:
        return self.samples(done) // self.n_windows > self.samples(done - 1) // self.n_windows

    def logs_at(self, done: int) -> bool:
        return done % self.train.log_every == 0 or done == self.total_steps

    def evaluates_at(self, done: int) -> bool:
        every = self.train.eval_every
        return bool(every and done % every == 0) or self.is_epoch_end(done) or done == self.total_steps

    def saves_at(self, done: int) -> bool:
        return self.evaluates_at(done) or bool(self.train.save_every and done % self.train.save_every == 0)

    def words_passed(self, done: int) -> list[float]:
        """The train.save_at_words counts that step ``done`` passed."""
        before, after = self.words(done - 1), self.words(done)
        return [w for w in self.train.save_at_words if before < w <= after]

    def syncs_at(self, done: int) -> bool:
        """Whether anything leaves the device after step ``done`` (a log line, a save, a kept model): the
        places where a diverged loss must stop training first."""
        return done % self.train.log_every == 0 or self.saves_at(done) or bool(self.words_passed(done))


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
    cadence: Cadence
    stream: WindowStream
    train_tokens: np.ndarray
    dev_tokens: np.ndarray
    dev_indices: np.ndarray
    manifest: dict
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
    def global_batch(self) -> int:
        return self.cadence.global_batch

    @property
    def total_steps(self) -> int:
        return self.cadence.total_steps

    @property
    def ck_dir(self) -> Path:
        return self.cfg.checkpoint_dir(self.model_cfg.name)

    @property
    def tokenizer_dir(self) -> Path:
        return self.cfg.data_dir / self.manifest["tokenizer"]

    def micro_batch(self, step: int, micro: int, step_hash: hashlib._Hash) -> Batch:
        """This rank's share of micro-step ``micro`` of optimizer step ``step``: rank ``r`` takes the r-th
        block of ``batch_size`` samples of every micro-step; its tokens are added to ``step_hash``."""
        bsz = self.train.batch_size
        first = self.cadence.samples(step) + (micro * self.world + self.rank) * bsz
        starts, ids = self.stream.take(first, bsz)
        tokens = gather_windows(self.train_tokens, starts, self.seq_len)
        step_hash.update(tokens.tobytes())
        x = torch.from_numpy(tokens)
        epochs = torch.arange(first, first + bsz, dtype=torch.int64) // self.stream.n_windows
        return Batch(input_ids=x.to(self.device, non_blocking=True), window_ids=torch.from_numpy(ids), epochs=epochs)


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
    cadence = Cadence(train=tcfg, global_batch=global_batch, seq_len=seq_len, n_windows=stream.n_windows,
                      words_per_token=words_per_token(manifest), total_steps=max(total_steps, 1))
    return RunPlan(cfg=cfg, model_cfg=model_cfg, mode=mode, device=device, world=world, rank=dist.rank(),
                   main=dist.is_main_process(), cadence=cadence, stream=stream, train_tokens=train_tokens,
                   dev_tokens=dev_tokens, dev_indices=dev_indices, manifest=manifest, components=components,
                   config_hash=identity.config_hash(components), data_hash=data_hash)
