"""vocab_alignment 'span': teachers with their own tokenizer, aligned with the student's on the text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from babyllama.config import Config, DistillConfig, ModelConfig
from babyllama.data.prepare import prepare
from babyllama.data.tokens import load_tokens
from babyllama.distill import span
from babyllama.distill.objective import DistillObjective
from babyllama.distill.span import SideTokenizer, SpanAligner
from babyllama.distill.teachers import TeacherEnsemble
from babyllama.models import build_model
from babyllama.train.objective import Batch
from babyllama.training import distill, train_model


def _model(seed: int, vocab: int, hidden: int = 16):
    torch.manual_seed(seed)
    cfg = ModelConfig(name=f"m{seed}", arch="llama", hidden_size=hidden, num_layers=1, num_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    return build_model(cfg, vocab, {"pad": 0, "bos": 1, "eos": 2}).eval()


def _other_tokenizer(cfg: Config, tmp_path: Path, vocab: int = 266) -> Config:
    """The same corpus prepared with another vocabulary size: another tokenizer of the same family."""
    tree = cfg.model_dump(mode="json", by_alias=True)
    tree |= {"out_dir": str(tmp_path / f"vocab{vocab}"), "tokenizer": {"vocab_size": vocab, "min_frequency": 2}}
    other = Config.model_validate(tree)
    prepare(other)
    return other


def _windows(cfg: Config, n: int = 4, length: int = 16) -> torch.Tensor:
    """Windows that start at a document (after a </s>), as a tokenizer would have split their text."""
    tokens = np.asarray(load_tokens(cfg.data_dir, "train"), dtype=np.int64)
    starts = [i + 1 for i in np.flatnonzero(tokens == 2)[::7][:n]]
    return torch.from_numpy(np.stack([tokens[i : i + length] for i in starts]))


def test_span_with_the_students_own_tokenizer_is_exact_distillation(prepared_cfg: Config, monkeypatch) -> None:
    monkeypatch.setattr(span, "SPAN_TOP_K", 10_000)  # every token its own bucket: nothing approximated
    side = SideTokenizer.load(prepared_cfg.data_dir / "tokenizer", "student")
    teachers = [_model(1, 300, 32), _model(2, 300)]
    student = _model(3, 300)
    ids = _windows(prepared_cfg)
    assert (ids == 2).any()  # the windows cross document separators
    for w_a in (1.0, 0.0):
        out = []  # one teacher at a time (span averages divergences, exact mixes distributions: equal for one)
        for aligners in (None, [SpanAligner(side, side, 64)] * 2):
            opts = DistillConfig(alpha=0.3, temperature=2.0, weights=[w_a, 1 - w_a])
            obj = DistillObjective(opts, [("a", "x"), ("b", "y")], [w_a, 1 - w_a], aligners=aligners,
                                   load_teachers=lambda device, dtype: TeacherEnsemble(teachers))
            obj.setup(torch.device("cpu"), None)
            student.zero_grad()
            loss, parts = obj.loss(student, Batch(ids, torch.tensor([-1] * len(ids))))
            loss.backward()
            out.append((loss.item(), [p.grad.clone() for p in student.parameters()]))
            if aligners is not None:
                assert parts["aligned"] == pytest.approx(1.0)  # the same tokenizer: every position aligned
        assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
        for a, b in zip(out[0][1], out[1][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_aligned_positions_end_at_the_same_text(prepared_cfg: Config, tmp_path: Path) -> None:
    other = _other_tokenizer(prepared_cfg, tmp_path)
    student = SideTokenizer.load(prepared_cfg.data_dir / "tokenizer", "student")
    teacher = SideTokenizer.load(other.data_dir / "tokenizer", "teacher")
    aligner = SpanAligner(student, teacher, 64)
    ids = _windows(prepared_cfg, n=6, length=32)
    al = aligner.align(ids)
    share = len(al.student_rows) / al.positions
    assert 0.5 < share < 1.0  # most boundaries are shared, not all: the vocabularies differ

    def text(pieces, row_ids) -> bytes:
        return b"".join(pieces[i] if pieces[i] is not None else b"\x00" for i in row_ids)

    length, width = ids.shape[1], al.teacher_ids.shape[1]
    for s, t in zip(al.student_rows.tolist(), al.teacher_rows.tolist(), strict=True):
        b, i = divmod(s, length)
        bt, j = divmod(t, width)
        assert b == bt
        s_text = text(student.pieces, ids[b, : i + 1].tolist())
        t_text = text(teacher.pieces, al.teacher_ids[b, : j + 1].tolist())
        assert s_text.endswith(t_text[-8:]) and t_text.endswith(s_text[-8:])  # the same text ends both


def test_a_teacher_with_another_tokenizer_distils_with_span(prepared_cfg: Config, tmp_path: Path) -> None:
    other = _other_tokenizer(prepared_cfg, tmp_path)
    train_model(other, "t-llama")
    teacher_dir = other.model_dir("t-llama")
    tree = prepared_cfg.model_dump(mode="json", by_alias=True)
    tree |= {"out_dir": str(tmp_path / "span"), "teachers": [{"name": "foreign", "from": str(teacher_dir)}]}
    exact = Config.model_validate(tree)
    shutil.copytree(prepared_cfg.data_dir, exact.data_dir)
    with pytest.raises(Exception, match="tokenizer.json files differ"):
        distill(exact)
    tree["distill"] = {**tree["distill"], "vocab_alignment": "span"}
    spanned = Config.model_validate(tree)
    out = distill(spanned)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 6 and all(0.5 < r["aligned"] <= 1.0 and r["kd"] > 0 for r in steps)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["objective"]["vocab_alignment"] == "span" and summary["objective"]["span_top_k"] == span.SPAN_TOP_K


def test_span_cache_needs_its_mode_and_refuses_per_token_weighting() -> None:
    with pytest.raises(Exception, match="set both to span, or neither"):
        DistillConfig(vocab_alignment="span", cache={"enabled": True})
    with pytest.raises(Exception, match="set both to span, or neither"):
        DistillConfig(cache={"enabled": True, "mode": "span"})
    assert DistillConfig(vocab_alignment="span", cache={"enabled": True, "mode": "span"}).cache.mode == "span"
    with pytest.raises(Exception, match="use weighting: fixed"):
        DistillConfig(vocab_alignment="span", weighting="confidence")


def _foreign_teacher(folder: Path, tokenizer: Path, seed: int) -> Path:
    """A random tiny llama saved with a tokenizer of its own, as an external (`from:`) teacher."""
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())
    size = len(vocab["model"]["vocab"]) + sum(1 for t in vocab.get("added_tokens", []) if t["id"] >= len(vocab["model"]["vocab"]))
    _model(seed, size, 16).save_pretrained(folder, safe_serialization=True)
    for f in tokenizer.iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def test_span_cache_gives_the_live_span_loss_and_reports_its_fidelity(prepared_cfg: Config, tmp_path: Path) -> None:
    """Two teachers, two tokenizers: the cache stores what the span loss reads, so loss and gradient match live."""
    from babyllama.distill.run import distill_objective
    from babyllama.report import approximations
    from babyllama.roles import Role

    other = _other_tokenizer(prepared_cfg, tmp_path, vocab=400)  # coarser: some student positions are not aligned
    dirs = [_foreign_teacher(tmp_path / "ta", other.data_dir / "tokenizer", 1),
            _foreign_teacher(tmp_path / "tb", prepared_cfg.data_dir / "tokenizer", 2)]
    tree = prepared_cfg.model_dump(mode="json", by_alias=True)
    tree |= {"teachers": [{"name": "a", "from": str(dirs[0])}, {"name": "b", "from": str(dirs[1])}]}
    tree["distill"] = {**tree["distill"], "vocab_alignment": "span", "weights": [0.7, 0.3], "alpha": 0.2,
                       "divergence": "js"}
    live_cfg = Config.model_validate(tree)
    tree["distill"] = {**tree["distill"], "cache": {"enabled": True, "mode": "span"}}
    cached_cfg = Config.model_validate(tree)
    length = prepared_cfg.data.seq_len
    tokens = np.asarray(load_tokens(prepared_cfg.data_dir, "train"), dtype=np.int64)
    wids = torch.arange(0, 60, 4)
    ids = torch.from_numpy(np.stack([tokens[w * length : (w + 1) * length] for w in wids.tolist()]))
    student = _model(3, 300)
    out = []
    for cfg in (live_cfg, cached_cfg):
        obj, _ = distill_objective(cfg)
        obj.setup(torch.device("cpu"), None)
        student.zero_grad()
        loss, parts = obj.loss(student, Batch(ids, wids))
        loss.backward()
        out.append((loss.item(), parts["aligned"], [p.grad.clone() for p in student.parameters()]))
    assert 0.5 < out[0][1] < 1.0 and out[1][1] == pytest.approx(out[0][1])  # one teacher splits text otherwise
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5)
    for a, b in zip(out[0][2], out[1][2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    key = obj.cache_key
    line = approximations([{"role": Role.STUDENT.value, "training": {"teacher_cache": obj.fingerprint()["cache"]}}],
                          cached_cfg.out)[0]
    assert line.startswith("Teachers: the `span` cache") and "% of the predicting positions are aligned" in line
    assert key is not None and obj.cache is not None
    spec = obj.cache.spec
    stored = sum(np.load(p, mmap_mode="r").nbytes for p in (cached_cfg.out / "cache" / key).glob("*.npy"))
    assert stored == spec.n_windows * spec.seq_len * spec.bytes_per_position  # the size the format states
    out_dir = distill(cached_cfg)  # the loop reads the cache by fixed window
    steps = [r for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps and all(0.5 < r["aligned"] < 1.0 and r["kd"] > 0 for r in steps)
