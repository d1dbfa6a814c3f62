"""The teacher-logit cache: round trip, top-k + tail approximation, resumable build, damage detection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from babyllama.distill.cache import CacheSpec, ensure_cache
from babyllama.distill.loss import DenseTeachers, SparseTeachers, combine, ensemble_log_probs
from babyllama.errors import UserError

V, L, N_WINDOWS = 50, 16, 40


class FakeTeachers:
    """Two 'teachers' whose logits are a fixed random table lookup; counts the windows they score."""

    def __init__(self, fail_after: int | None = None) -> None:
        g = torch.Generator().manual_seed(11)
        self.tables = [torch.randn(V, V, generator=g) * 3, torch.randn(V, V, generator=g) * 2]
        self.windows = 0
        self.fail_after = fail_after

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.fail_after is not None and self.windows >= self.fail_after:
            raise KeyboardInterrupt("killed during the cache build")
        self.windows += x.shape[0]
        return [t[x] for t in self.tables]


def _tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, V, N_WINDOWS * L + 5).astype(np.uint16)


def _spec(**kw) -> CacheSpec:
    base = dict(teachers=(("a", "h1"), ("b", "h2")), data_hash="d0", seq_len=L, n_windows=N_WINDOWS, vocab_size=V,
                ensemble="logit_mean", weights=(0.25, 0.75), temperature=2.0, top_k=V, shard_windows=7)
    base.update(kw)
    return CacheSpec(**base)


def _build(tmp_path, spec, teachers=None, logs=None):
    teachers = teachers or FakeTeachers()
    cache = ensure_cache(tmp_path / "cache", spec, _tokens(), lambda: teachers, device=torch.device("cpu"),
                         batch_size=3, log=(logs.append if logs is not None else lambda _m: None))
    return cache, teachers


def _exact(spec: CacheSpec, wids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = _tokens()
    x = torch.from_numpy(np.stack([tokens[w * L:(w + 1) * L].astype(np.int64) for w in wids]))
    logits = FakeTeachers()(x)
    return x, ensemble_log_probs(logits, spec.temperature, spec.ensemble, spec.weights)


@pytest.mark.parametrize("ensemble", ["logit_mean", "prob_mean"])
def test_round_trip_is_exact_when_k_is_the_vocabulary(tmp_path, ensemble):
    spec = _spec(ensemble=ensemble)
    cache, _ = _build(tmp_path, spec)
    assert spec.n_shards == 6 and not spec.has_tail
    wids = np.array([3, 17, 39, 0])
    ids, values, tail = cache.rows(torch.from_numpy(wids))
    assert tail is None and ids.shape == (4, L, V) and values.dtype == torch.float16
    x, exact = _exact(spec, wids)
    sparse = SparseTeachers.from_top_k(ids.reshape(-1, V), values.reshape(-1, V), None)
    dense_p = torch.zeros(4 * L, V).scatter_(-1, sparse.ids, sparse.log_probs.exp())
    torch.testing.assert_close(dense_p, exact.reshape(-1, V).exp(), atol=2e-3, rtol=0)  # float16 storage only
    student = torch.randn(4, L, V, generator=torch.Generator().manual_seed(1))
    dense = DenseTeachers([exact.reshape(-1, V)], 1.0, "logit_mean", [1.0])  # already tempered log-probs
    for divergence in ["forward_kl", "reverse_kl", "js"]:
        _, from_cache = combine(student, sparse, x, alpha=0.5, temperature=2.0, divergence=divergence)
        _, live = combine(student, _tempered(dense), x, alpha=0.5, temperature=2.0, divergence=divergence)
        assert from_cache["kd"].item() == pytest.approx(live["kd"].item(), rel=2e-3), divergence
        assert from_cache["agree"].item() == live["agree"].item()


def _tempered(dense: DenseTeachers) -> DenseTeachers:
    """A source whose chunks are the given log-probs as they are (no further temperature)."""
    return DenseTeachers(dense.logits, 1.0, "prob_mean", [1.0])


def test_top_k_with_tail_mass(tmp_path):
    spec = _spec(top_k=5)
    cache, _ = _build(tmp_path, spec)
    assert spec.has_tail
    wids = np.arange(N_WINDOWS)
    ids, values, tail = cache.rows(wids)
    x, exact = _exact(spec, wids)
    top = exact.topk(5, dim=-1)
    assert torch.equal(ids, top.indices)
    torch.testing.assert_close(values.float(), top.values, atol=8e-3, rtol=1e-3)
    torch.testing.assert_close(tail.exp(), 1 - top.values.exp().sum(-1), atol=1e-5, rtol=1e-4)
    sparse = SparseTeachers.from_top_k(ids.reshape(-1, 5), values.reshape(-1, 5), tail.reshape(-1))
    student = torch.randn(N_WINDOWS, L, V, generator=torch.Generator().manual_seed(2)) * 2
    dense = _tempered(DenseTeachers([exact.reshape(-1, V)], 1.0, "logit_mean", [1.0]))
    for divergence in ["forward_kl", "reverse_kl", "js"]:
        _, approx = combine(student, sparse, x, alpha=0.5, temperature=2.0, divergence=divergence)
        _, live = combine(student, dense, x, alpha=0.5, temperature=2.0, divergence=divergence)
        # collapsing onto k + 1 buckets can only lower an f-divergence (data processing inequality)
        assert 0 < approx["kd"].item() <= live["kd"].item() * (1 + 1e-3), divergence


def test_interrupted_build_resumes_and_matches_a_clean_build(tmp_path):
    spec = _spec(top_k=4)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "a", spec, FakeTeachers(fail_after=17))  # dies inside the third shard
    root = tmp_path / "a" / "cache" / spec.key()
    assert not (root / "manifest.json").exists()
    assert sorted(p.name for p in root.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    logs: list[str] = []
    resumed, teachers = _build(tmp_path / "a", spec, logs=logs)
    assert teachers.windows == N_WINDOWS - 14  # only the 4 missing shards were scored
    assert any("scoring 26 of 40 windows" in m and "2 of 6 shards already built" in m for m in logs)
    clean, _ = _build(tmp_path / "b", spec)
    for part in spec.parts():
        for i in range(spec.n_shards):
            a = (root / f"shard-{i:05d}.{part}.npy").read_bytes()
            assert a == (tmp_path / "b" / "cache" / spec.key() / f"shard-{i:05d}.{part}.npy").read_bytes()
    assert (root / "manifest.json").exists()
    assert torch.equal(resumed.rows([5, 33])[1], clean.rows([5, 33])[1])


def test_truncated_or_corrupted_shards_are_reported_and_rebuilt(tmp_path):
    spec = _spec(top_k=4)
    cache, _ = _build(tmp_path, spec)
    before = cache.rows(np.arange(N_WINDOWS))
    del cache
    root = tmp_path / "cache" / spec.key()
    values = root / "shard-00002.values.npy"
    values.write_bytes(values.read_bytes()[:-10])  # truncated
    ids = root / "shard-00004.ids.npy"
    blob = bytearray(ids.read_bytes())
    blob[-3] ^= 0xFF  # same length, different content
    ids.write_bytes(bytes(blob))
    logs: list[str] = []
    cache, teachers = _build(tmp_path, spec, logs=logs)
    assert any("shard-00002" in m and "truncated" in m for m in logs)
    assert any("shard-00004" in m and "sha256" in m for m in logs)
    assert teachers.windows == 14  # the two damaged shards, nothing else
    after = cache.rows(np.arange(N_WINDOWS))
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)
    logs.clear()
    _, teachers = _build(tmp_path, spec, logs=logs)  # intact now: nothing rebuilt, nothing reported
    assert teachers.windows == 0 and not logs


def test_key_changes_with_what_the_numbers_depend_on(tmp_path):
    spec = _spec(top_k=4)
    keys = {spec.key()}
    for change in [dict(temperature=1.0), dict(top_k=5), dict(ensemble="prob_mean"), dict(weights=(0.5, 0.5)),
                   dict(teachers=(("a", "h1"), ("b", "h3"))), dict(data_hash="d1"), dict(seq_len=8)]:
        keys.add(dataclasses.replace(spec, **change).key())
    assert len(keys) == 8
    _build(tmp_path, spec)
    other, _ = _build(tmp_path, dataclasses.replace(spec, temperature=1.0))
    assert other.root != tmp_path / "cache" / spec.key() and (other.root / "manifest.json").exists()
    (tmp_path / "cache" / spec.key() / "spec.json").write_text('{"tampered": true}')
    with pytest.raises(UserError, match="different cache"):
        _build(tmp_path, spec)


def test_rows_need_fixed_window_ids(tmp_path):
    cache, _ = _build(tmp_path, _spec(top_k=3))
    with pytest.raises(ValueError, match="fixed windows"):
        cache.rows(torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="fixed windows"):
        cache.rows([N_WINDOWS])


WORKER = """
import json, sys
import torch
sys.path.insert(0, {tests!r})
from test_distill_cache import FakeTeachers, _spec, _tokens
from babyllama.distill.cache import ensure_cache
teachers = FakeTeachers()
cache = ensure_cache({root!r}, _spec(top_k=4), _tokens(), lambda: teachers, device=torch.device("cpu"),
                     batch_size=3, log=lambda _m: None)
print(json.dumps({{"windows": teachers.windows, "key": cache.key}}))
"""


def test_two_ranks_split_the_build(tmp_path):
    """Under torchrun every rank scores its own shards, then all open the same complete cache."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent), root=str(tmp_path / "cache")))
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
             for r in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [o["windows"] for o in outs] == [7 + 7 + 7, 7 + 7 + 5]  # shards 0, 2, 4 and 1, 3, 5
    spec = _spec(top_k=4)
    assert outs[0]["key"] == outs[1]["key"] == spec.key()
    assert (tmp_path / "cache" / spec.key() / "manifest.json").is_file()
    single, _ = _build(tmp_path / "single", spec)
    distributed, teachers = _build(tmp_path, spec)
    assert teachers.windows == 0  # complete and intact: nothing to redo
    for a, b in zip(single.rows(np.arange(N_WINDOWS)), distributed.rows(np.arange(N_WINDOWS)), strict=True):
        assert torch.equal(a, b)


def test_damaged_cache_metadata_is_rebuilt_or_refused_in_one_line(tmp_path):
    import json

    from babyllama.distill.formats import MANIFEST_FILE, fidelity
    from babyllama.io import file_sha256

    spec = _spec(top_k=8)
    _build(tmp_path, spec)
    root = tmp_path / "cache" / spec.key()
    (root / MANIFEST_FILE).write_text('{"shards": [{"windows": "no"}]')  # cut short
    assert fidelity(root) == {}  # the report states nothing rather than failing
    record = json.loads((root / "shard-00001.json").read_text())
    (root / "shard-00001.json").write_text(json.dumps({**record, "files": {p: "x" for p in record["files"]}}))
    logs: list[str] = []
    _, teachers = _build(tmp_path, spec, logs=logs)  # the damaged record is reported and its shard rebuilt
    assert teachers.windows == 7 and any("shard-00001 record does not list" in m for m in logs)
    assert fidelity(root)  # and the manifest is whole again
    # an object array whose record an attacker fixed: opened without unpickling, refused in one line
    ids = root / "shard-00002.ids.npy"
    np.save(ids, np.array([{"x": 1}] * 7, dtype=object), allow_pickle=True)
    record = json.loads((root / "shard-00002.json").read_text())
    record["files"]["ids"] = {"bytes": ids.stat().st_size, "sha256": file_sha256(ids)}
    (root / "shard-00002.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="shard-00002.ids.npy: not a plain numeric array"):
        _build(tmp_path, spec)
