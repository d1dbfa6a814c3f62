"""Cache formats are objects: one registry names them, and only it tells them apart."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from babyllama.distill.cache import ensure_caches
from babyllama.distill.formats import FORMATS, cache_format, fidelity
from babyllama.distill.loss import SampledTeachers, SparseTeachers
from test_distill_cache import N_WINDOWS, FakeTeachers, _build, _spec, _tokens

SRC = Path(__file__).resolve().parents[1] / "src" / "babyllama"
#: The two modules that may name a format: the registry, and the config schema that lists the valid names.
OWNERS = {SRC / "distill" / "formats.py", SRC / "config.py"}


def test_only_the_registry_compares_cache_modes():
    """A third format must be one class: no other module branches on a mode's name."""
    names = "|".join(map(re.escape, FORMATS))
    branch = re.compile(rf"""(==|!=|\bin\b)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if p not in OWNERS
                 for i, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert offenders == []


def test_unknown_format_is_refused_in_one_line():
    with pytest.raises(ValueError, match="cache mode must be one of 'sample', 'top_k', 'span', got 'bogus'"):
        cache_format("bogus")
    with pytest.raises(ValueError, match="cache mode must be one of"):
        _spec(mode="bogus")


@pytest.mark.parametrize(("mode", "kw", "source_type"), [
    ("top_k", {"top_k": 8}, SparseTeachers), ("sample", {"top_k": 0, "samples": 8, "seed": 3, "sets": 2}, SampledTeachers)])
def test_each_format_writes_reads_and_reports_through_its_class(tmp_path, mode, kw, source_type):
    spec = _spec(mode=mode, **kw)
    fmt = spec.format
    assert fmt is FORMATS[mode] and spec.parts() == fmt.parts(spec)
    logs: list[str] = []
    cache, _ = _build(tmp_path, spec, logs=logs)
    assert logs[-1].startswith(f"teacher cache {spec.key()}: ")  # the format's coverage line
    per_position = sum(np.load(p, mmap_mode="r").nbytes for p in cache.root.glob("*.npy")) / (N_WINDOWS * spec.seq_len)
    assert per_position == spec.bytes_per_position  # the size the format states is the size written
    source = cache.source(np.arange(3), torch.device("cpu"), np.array([0, 1, 2]))
    assert isinstance(source, source_type) and source.ids.shape == (3 * spec.seq_len, spec.k)
    fid = fidelity(cache.root)
    assert set(fid) == ({"topk_mass"} if mode == "top_k" else {"sampled_mass", "distinct", "noise_ratio", "samples", "sets"})
    identity = {"enabled": True, "mode": mode, **kw, "key": spec.key()}
    line = fmt.report_line(identity, fid)
    assert line.startswith(f"Teachers: the `{mode}` cache") and line.endswith(".")
    assert fmt.card_words(identity).startswith(", teacher logits from the")


def test_one_teacher_pass_builds_every_seeds_cache_bit_identical_to_alone(tmp_path):
    """A sweep's seeds share the teachers' forward: each cache equals the one its seed builds alone."""
    specs = [_spec(top_k=0, mode="sample", samples=8, seed=seed, sets=2) for seed in (1, 2, 3)]
    teachers = FakeTeachers()
    together = ensure_caches(tmp_path / "together", specs, _tokens(), lambda: teachers, device=torch.device("cpu"),
                             batch_size=3, log=lambda _m: None)
    assert teachers.windows == N_WINDOWS  # scored once for three caches
    for spec, cache in zip(specs, together, strict=True):
        alone, _ = _build(tmp_path / f"alone{spec.seed}", spec)
        files = sorted(p.name for p in alone.root.glob("*.npy"))
        assert files == sorted(p.name for p in cache.root.glob("*.npy"))
        assert all((alone.root / f).read_bytes() == (cache.root / f).read_bytes() for f in files)
    assert not torch.equal(together[0].rows(np.arange(4))[0], together[1].rows(np.arange(4))[0])
    with pytest.raises(ValueError, match="differ at most in their draw seed"):
        ensure_caches(tmp_path / "x", [specs[0], _spec(top_k=0, mode="sample", samples=9, seed=1)], _tokens(),
                      lambda: teachers, device=torch.device("cpu"))
