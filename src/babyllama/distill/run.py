"""The student's objective: the teachers' ensemble, live or from the teacher-logit cache.

babyllama.training fits it with the one training loop and fingerprints the same object, so the
distillation identity is ``DistillObjective.fingerprint`` and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from babyllama import distributed as dist
from babyllama.config import Config
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.data.windows import num_fixed_windows
from babyllama.distill.cache import (
    MANIFEST_FILE,
    CacheSpec,
    TeacherCache,
    TeacherFn,
    ensure_caches,
    plan_samples,
    same_pass,
    weights_hash,
)
from babyllama.distill.formats import cache_format, fidelity
from babyllama.distill.loss import normalised_weights
from babyllama.distill.objective import DistillObjective
from babyllama.distill.span import SideTokenizer, SpanAligner, score_aligned
from babyllama.distill.teachers import TeacherEnsemble, check_shared_tokenizer, teacher_dirs, teacher_dtype
from babyllama.errors import UserError
from babyllama.existing import model_info
from babyllama.identity import model_seed
from babyllama.io import atomic_write_json, file_sha256, read_json, stable_hash
from babyllama.runtime import training_device

#: Positions per teacher forward pass while building the cache.
BUILD_TOKENS = 4096


def _student(cfg: Config):
    if cfg.student is None:
        raise UserError("distill: the config has no `student:` section (the model to distil into)")
    return cfg.student


def draw_seed(cfg: Config) -> int:
    """The seed of the cache's draws: distill.cache.seed, else the student's own seed, so that the members
    of a sweep (each its own train.seed) draw independent samples and their spread includes the cache's."""
    return cfg.distill.cache.seed if cfg.distill.cache.seed is not None else model_seed(cfg, _student(cfg))


def draw_sets(cfg: Config) -> int:
    """Sets of draws to store: distill.cache.draw_sets, else one per epoch the student trains (at most 64)."""
    if cfg.distill.cache.draw_sets is not None:
        return cfg.distill.cache.draw_sets
    return max(1, min(64, math.ceil(_student(cfg).train.epochs)))


def cache_spec(cfg: Config, manifest: dict, teachers: list[tuple[str, str]], n_tokens: int,
               dirs: list[Path] | None = None, samples: int | None = None) -> CacheSpec:
    """The cache identity for this config: teachers' weights and config.json, data, windows, ensemble, T,
    the mode with its k or sample count, seed and sets, the dtype and device kind the teachers compute in,
    and the torch/transformers versions. ``samples`` resolves distill.cache.samples: auto."""
    opts = cfg.distill
    device = training_device()
    fields = cache_format(opts.cache.mode).spec_fields(opts.cache, samples=samples, seed=draw_seed(cfg),
                                                       sets=draw_sets(cfg))
    return CacheSpec(
        teachers=tuple((name, sha) for name, sha in teachers),
        data_hash=str(manifest["data_hash"]),
        seq_len=cfg.data.seq_len,
        n_windows=num_fixed_windows(n_tokens, cfg.data.seq_len),
        vocab_size=int(manifest["vocab_size"]),
        ensemble=opts.ensemble,
        weights=tuple(normalised_weights(opts.weights, len(teachers))),
        temperature=opts.temperature,
        mode=opts.cache.mode,
        **fields,
        teacher_configs=tuple(file_sha256(d / "config.json") for d in (dirs or teacher_dirs(cfg))),
        libraries=f"torch {torch.__version__}, transformers {version('transformers')}",  # its metadata: no import
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


def _log(msg: str) -> None:
    if dist.is_main_process():
        print(msg, flush=True)


def resolved_spec(cfg: Config, manifest: dict, dirs: list[Path], teachers: list[tuple[str, str]], n_tokens: int,
                  plan: bool = False) -> CacheSpec | None:
    """cache_spec with distill.cache.samples: auto resolved by :func:`plan_samples` (its plan is kept under
    <out_dir>/cache/plan-<hash>.json, so it is made once). An unplanned 'auto' gives None unless ``plan``:
    then the teachers are loaded and score a few windows (the one time the objective reads weights early)."""
    opts = cfg.distill.cache
    if not cache_format(opts.mode).needs_plan(opts):
        return cache_spec(cfg, manifest, teachers, n_tokens, dirs)
    draft = cache_spec(cfg, manifest, teachers, n_tokens, dirs, samples=1)
    # the plan depends on the teachers' distributions, not on the draws' seed: one plan serves every seed of a
    # sweep, so each member resolves its spec at once and one teacher pass builds them all (build_teacher_cache)
    plan_key = {**draft.as_dict(), "seed": None, "samples": "auto", "target": opts.noise_target}
    plan_path = cfg.out / "cache" / f"plan-{stable_hash(plan_key)[:20]}.json"
    if plan_path.is_file():
        plan = read_json(plan_path)
    elif not plan:
        return None
    else:
        tokens = load_tokens(cfg.data_dir, "train")
        device = training_device()
        ensemble = TeacherEnsemble.load(dirs, device, getattr(torch, draft.compute_dtype))
        plan = plan_samples(draft, tokens, ensemble, device, opts.noise_target)
        del ensemble
        if dist.is_main_process():
            plan_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(plan_path, plan)
        _log(f"teacher cache: samples: auto -> {plan['samples']} draws per position (tempered entropy "
             f"{plan['entropy']:.2f} nats on {plan['windows']} windows; planned noise ratio <= "
             f"{plan['planned_ratio'] or float('nan'):.3g}, target {opts.noise_target})")
    return cache_spec(cfg, manifest, teachers, n_tokens, dirs, samples=int(plan["samples"]))


def build_teacher_cache(cfg: Config, companions: Sequence[Config] = ()) -> TeacherCache:
    """Build (or verify and open) the teacher-logit cache for ``cfg``, whatever distill.cache.enabled says.

    ``companions`` (configs that distil from the same teacher folders, e.g. the other members of a sweep
    with the same teacher home): those whose cache differs from this one only in its draw seed and is not
    built yet are built in the same pass of the teachers (one forward serves every seed's draws)."""
    manifest, dirs, teachers = _teachers(cfg)
    tokens = load_tokens(cfg.data_dir, "train")
    spec = resolved_spec(cfg, manifest, dirs, teachers, len(tokens), plan=True)
    assert spec is not None
    others = []
    for c in companions:
        if not c.distill.cache.enabled or [t.name for t in c.teachers] != [t.name for t in cfg.teachers]:
            continue
        other = resolved_spec(c, manifest, dirs, teachers, len(tokens))
        if other is not None and same_pass(spec, other) and not (cfg.out / "cache" / other.key() / MANIFEST_FILE).is_file():
            others.append(other)
    return _ensure(cfg, [spec, *others], dirs, tokens, training_device())[0]


def build_batch(spec: CacheSpec, n_teachers: int, device: torch.device, train_batch: int) -> int:
    """Windows per teacher forward while building: BUILD_TOKENS positions on the CPU; on a GPU as many as a
    quarter of its free memory holds (each teacher's logits, in float32, plus the ensemble's)."""
    tokens = BUILD_TOKENS
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        tokens = max(tokens, int(free // 4 // (spec.vocab_size * 4 * (n_teachers + 2))))
    return max(train_batch, tokens // spec.seq_len)


def _ensure(cfg: Config, specs: list[CacheSpec], dirs: list[Path], tokens: np.ndarray,
            device: torch.device) -> list[TeacherCache]:
    def load() -> TeacherFn:
        ensemble = TeacherEnsemble.load(dirs, device, getattr(torch, specs[0].compute_dtype))
        if not specs[0].format.per_teacher:
            return ensemble
        aligners = span_aligners(cfg, read_manifest(cfg.data_dir), dirs)  # each teacher on its own tokens
        return lambda x: score_aligned(ensemble.models, aligners, x, specs[0].vocab_size, specs[0].temperature, device)

    batch = build_batch(specs[0], len(dirs), device, _student(cfg).train.batch_size)
    caches = ensure_caches(cfg.out / "cache", specs, tokens, load, device=device, batch_size=batch, log=_log,
                           progress=cfg.logging.progress and dist.is_main_process())
    _say_noise([c for c in caches if c.built], cfg.distill.cache.noise_target)
    return caches


def _say_noise(built: Sequence[TeacherCache], target: float) -> None:
    """Said once, in one line for the caches of one teacher pass, when they are built: their measured draw noise
    is above ``distill.cache.noise_target``. The gradient stays unbiased, but a noisy one keeps less of the KD
    gain (README, 'The teacher cache')."""
    noisy = {c.key: r for c in built if (r := fidelity(c.root).get("noise_ratio")) is not None and r > target}
    if noisy:
        low, high = f"{min(noisy.values()):.3g}", f"{max(noisy.values()):.3g}"
        ratio = low if low == high else f"{low}-{high}"
        _log(f"teacher cache {', '.join(noisy)}: the draws' noise ratio {ratio} is above distill.cache.noise_target "
             f"{target:g}: a student trained on it can keep less of the KD gain than live teachers give; more draws "
             "lower it (distill.cache.samples: a larger number, or 'auto': the fewest up to 255 that meet the target)")


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
        spec = resolved_spec(cfg, manifest, dirs, teachers, int(manifest["splits"]["train"]["tokens"]), plan=True)
        assert spec is not None
        objective = DistillObjective(
            cfg.distill, teachers, weights, cache_key=spec.key(), fused=student.train.fused_loss,
            open_cache=lambda device: _ensure(cfg, [spec], dirs, load_tokens(cfg.data_dir, "train"), device)[0])
        return objective, f"student {student.name} distilled from {names} (cache: {spec.describe()})"

    def load(device: torch.device, dtype: torch.dtype) -> TeacherEnsemble:
        return TeacherEnsemble.load(dirs, device, dtype)

    aligners = span_aligners(cfg, manifest, dirs) if cfg.distill.span_aligned else None
    objective = DistillObjective(cfg.distill, teachers, weights, load_teachers=load, aligners=aligners,
                                 fused=student.train.fused_loss and aligners is None)
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
