"""The student's objective: the teachers' ensemble, live or from the teacher-logit cache.

babyllama.training fits it with the one training loop and fingerprints the same object, so the
distillation identity is ``DistillObjective.fingerprint`` and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from babyllama import distributed as dist
from babyllama.config import Config
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.data.windows import num_fixed_windows
from babyllama.distill.cache import CacheSpec, TeacherCache, ensure_cache, weights_hash
from babyllama.distill.loss import normalised_weights
from babyllama.distill.objective import DistillObjective
from babyllama.distill.span import SideTokenizer, SpanAligner
from babyllama.distill.teachers import TeacherEnsemble, check_shared_tokenizer, teacher_dirs, teacher_dtype
from babyllama.errors import UserError
from babyllama.existing import model_info
from babyllama.runtime import training_device

#: Positions per teacher forward pass while building the cache.
BUILD_TOKENS = 4096


def _student(cfg: Config):
    if cfg.student is None:
        raise UserError("distill: the config has no `student:` section (the model to distil into)")
    return cfg.student


def cache_spec(cfg: Config, manifest: dict, teachers: list[tuple[str, str]], n_tokens: int) -> CacheSpec:
    """The cache identity for this config: teachers' weights, data, windows, ensemble, T, the mode with
    its k or sample count and seed, and the dtype and device kind the teachers compute in."""
    opts = cfg.distill
    device = training_device()
    sample = opts.cache.mode == "sample"
    return CacheSpec(
        teachers=tuple((name, sha) for name, sha in teachers),
        data_hash=str(manifest["data_hash"]),
        seq_len=cfg.data.seq_len,
        n_windows=num_fixed_windows(n_tokens, cfg.data.seq_len),
        vocab_size=int(manifest["vocab_size"]),
        ensemble=opts.ensemble,
        weights=tuple(normalised_weights(opts.weights, len(teachers))),
        temperature=opts.temperature,
        top_k=0 if sample else opts.cache.top_k,
        mode=opts.cache.mode,
        samples=opts.cache.samples if sample else 0,
        seed=cfg.seed if sample else 0,
        compute_dtype=str(teacher_dtype(_student(cfg).train.precision, device)).removeprefix("torch."),
        device=device.type,
        weighting=opts.weighting,
    )


def _teachers(cfg: Config) -> tuple[dict, list[Path], list[tuple[str, str]]]:
    _student(cfg)
    manifest = read_manifest(cfg.data_dir)
    dirs = teacher_dirs(cfg)
    if cfg.distill.vocab_alignment == "exact":
        check_shared_tokenizer(cfg, manifest, dirs)
    else:
        span_aligners(cfg, manifest, dirs)  # refuses a teacher with no tokenizer or no shared token, early
    return manifest, dirs, [(t.name, weights_hash(d)) for t, d in zip(cfg.teachers, dirs, strict=True)]


def build_teacher_cache(cfg: Config) -> TeacherCache:
    """Build (or verify and open) the teacher-logit cache for ``cfg``, whatever distill.cache.enabled says."""
    manifest, dirs, teachers = _teachers(cfg)
    tokens = load_tokens(cfg.data_dir, "train")
    return _ensure(cfg, cache_spec(cfg, manifest, teachers, len(tokens)), dirs, tokens, training_device())


def _ensure(cfg: Config, spec: CacheSpec, dirs: list[Path], tokens: np.ndarray, device: torch.device) -> TeacherCache:
    def load() -> TeacherEnsemble:
        return TeacherEnsemble.load(dirs, device, getattr(torch, spec.compute_dtype))

    def log(msg: str) -> None:
        if dist.is_main_process():
            print(msg, flush=True)

    # about 4096 positions per teacher forward: fewer, larger batches than training uses
    batch = max(_student(cfg).train.batch_size, BUILD_TOKENS // cfg.data.seq_len)
    return ensure_cache(cfg.out / "cache", spec, tokens, load, device=device, batch_size=batch, log=log,
                        progress=cfg.logging.progress and dist.is_main_process())


def distill_objective(cfg: Config) -> tuple[DistillObjective, str]:
    """The student's objective and how the run describes it. Reads manifests, weight hashes and tokenizers
    only: the teachers (or the cache) are loaded when the loop sets the objective up.

    With distill.cache.enabled the ensemble is scored once (sampled tokens or top-k, cached under
    <out_dir>/cache/) and the student trains on the fixed windows the cache covers; otherwise the
    teachers run live.
    """
    student = _student(cfg)
    manifest, dirs, teachers = _teachers(cfg)
    weights = normalised_weights(cfg.distill.weights, len(teachers))
    names = ", ".join(name for name, _ in teachers)
    if cfg.distill.cache.enabled:
        spec = cache_spec(cfg, manifest, teachers, int(manifest["splits"]["train"]["tokens"]))
        objective = DistillObjective(
            cfg.distill, teachers, weights, cache_key=spec.key(),
            open_cache=lambda device: _ensure(cfg, spec, dirs, load_tokens(cfg.data_dir, "train"), device))
        return objective, f"student {student.name} distilled from {names} (cache: {spec.describe()})"

    def load(device: torch.device, dtype: torch.dtype) -> TeacherEnsemble:
        return TeacherEnsemble.load(dirs, device, dtype)

    aligners = span_aligners(cfg, manifest, dirs) if cfg.distill.vocab_alignment == "span" else None
    objective = DistillObjective(cfg.distill, teachers, weights, load_teachers=load, aligners=aligners)
    how = " (span-aligned on the text)" if aligners else ""
    return objective, f"student {student.name} distilled from {names}{how}"


def span_aligners(cfg: Config, manifest: dict, dirs: list[Path]) -> list[SpanAligner]:
    """One aligner per teacher (vocab_alignment 'span'): the student's tokenizer against the teacher's own."""
    student = SideTokenizer.load(cfg.data_dir / str(manifest.get("tokenizer", "tokenizer")), "the prepared data")
    out = []
    for t, d in zip(cfg.teachers, dirs, strict=True):
        info = model_info(d)
        out.append(SpanAligner(student, SideTokenizer.load(d, f"teacher {t.name!r}"), info.max_positions))
    return out
