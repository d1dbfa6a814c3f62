"""Both sentences of a pair in one row (evaluate/packed.py): the same scores, item by item, as one sentence per
row; models scored side by side give the results they give one after another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from babyllama.evaluate import packed
from babyllama.evaluate.blimp import (
    _input,
    encode,
    evaluate_blimp,
    load_pairs,
    official_inputs,
    score_sequences,
)
from babyllama.evaluate.formats import load_causal_lm
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)

FIX = Path(__file__).parent / "fixtures" / "eval"
#: Pairs that share a beginning of every length (none, part, one a prefix of the other, identical) and not.
PAIRS = [("The cat sees the dog.", "The cat see the dog."), ("Many girls insulted themselves.", "Many girls insulted herself."),
         ("The cat sees the dog.", "The cat sees the dog. The cats see."), ("Who should Derek hug?", "Who should Derek hug?"),
         ("A man was helping himself.", "Is the teacher who is here tall?"), ("She thinks that he is happy.", "He thinks.")]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_dir(request, tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp(request.param) / "m", request.param, seed=3)


def _sentences() -> tuple[list[str], list[str]]:
    pairs = [p for folder in ("blimp_original", "supplement") for p in load_pairs(FIX / folder)[0]]
    return [g for g, _ in PAIRS] + [p.good for p in pairs], [b for _, b in PAIRS] + [p.bad for p in pairs]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("how", ["eos", "none", "tokenizer", "cut"])
def test_packed_pairs_score_as_one_sentence_per_row(model_dir, how, reduction):
    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    assert packed.packable(model)
    good, bad = _sentences()
    spans = None
    if how == "tokenizer":  # the 2025/2026 scored spans
        seqs, spans = official_inputs(tok, good + bad, good + bad)
    else:
        seqs = encode(tok, good + bad, leading_space=True)
    pid = tok.eos_token_id if how in ("eos", "cut") else None
    cut = 6 if how == "cut" else None  # inputs cut to their last 6 tokens: some pairs share nothing then
    inputs = [_input(s, spans[i] if spans else None, pid, cut) for i, s in enumerate(seqs)]
    n = len(good)
    ref = [s for s in _reference(model, inputs, reduction)]
    batches = packed.plan(inputs[:n], inputs[n:], tokens_per_batch=40)
    assert len(batches) > 2 and any(len(b.pairs) > 1 for b in batches)  # rows of different lengths padded
    a, b = packed.score_pairs(packed.fuse_gelu(model), batches, reduction, n)
    assert a + b == pytest.approx(ref, abs=1e-4, rel=1e-5)
    assert [x > y for x, y in zip(a, b, strict=True)] == [x > y for x, y in zip(ref[:n], ref[n:], strict=True)]
    assert a[3] == b[3]  # identical sentences: exactly tied, as one sentence per row scores them


def _reference(model, inputs, reduction) -> list[float]:
    """Scores one sentence per row, each input as given (already prefixed and cut)."""
    seqs = [x for x, _, _ in inputs]
    spans = [(first, stop) for _, first, stop in inputs]
    return score_sequences(model, seqs, prefix_id=None, reduction=reduction, spans=spans, truncate=False)


def test_packed_scores_with_eager_attention(model_dir):
    """Eager attention adds the mask to the scores: the boolean mask is turned into an additive one."""
    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    good, bad = _sentences()
    inputs = [_input(s, None, tok.eos_token_id, None) for s in encode(tok, good + bad, leading_space=True)]
    n = len(good)
    sdpa = sum(packed.score_pairs(model, packed.plan(inputs[:n], inputs[n:], 60), "sum", n), [])
    model.config._attn_implementation = "eager"
    eager = sum(packed.score_pairs(model, packed.plan(inputs[:n], inputs[n:], 60), "sum", n), [])
    assert eager == pytest.approx(sdpa, abs=1e-5)


def test_fused_gelu_is_gpt2s_gelu(tmp_path):
    model, _ = load_causal_lm(make_model_dir(tmp_path / "g", "gpt2"), torch.device("cpu"))
    x = torch.linspace(-6, 6, 1001)
    before = model.transformer.h[0].mlp.act(x)
    assert type(packed.fuse_gelu(model).transformer.h[0].mlp.act) is torch.nn.GELU
    assert model.transformer.h[0].mlp.act(x) == pytest.approx(before, abs=1e-6)


def test_evaluation_agrees_with_one_sentence_per_row(tmp_path):
    """The evaluate path (packed, fused GELU) makes the same decision on every pair as the previous scorer."""
    for arch in ("llama", "gpt2"):
        d = make_model_dir(tmp_path / arch, arch, seed=5)
        result = evaluate_blimp(d, FIX / "blimp_original", device="cpu")
        model, tok = load_causal_lm(d, torch.device("cpu"))
        pairs, _ = load_pairs(FIX / "blimp_original")
        scores = score_sequences(model, encode(tok, [p.good for p in pairs] + [p.bad for p in pairs], True),
                                 prefix_id=tok.eos_token_id)
        n = len(pairs)
        decided = "".join("1" if g > b else "0" for g, b in zip(scores[:n], scores[n:], strict=True))
        assert "".join(result["paradigm_items"][p] for p in dict.fromkeys(p.paradigm for p in pairs)) == decided


def test_chunked_tokenization_gives_the_tokenizers_own_ids(tmp_path):
    """Tokenizing distinct words (evaluate/chunked.py) gives each text the ids the tokenizer gives it whole,
    including texts that must go whole (other whitespace) and characters NFKC turns into a space."""
    from tokenizers import normalizers, pre_tokenizers

    from babyllama.evaluate.chunked import encode_chunked
    from fixtures.eval.tiny_models import train_tokenizer

    tok = train_tokenizer()
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.NFKC()
    texts = [s for pair in PAIRS for s in pair] + ["A: Did you eat?\nB: Yes.", "two  spaces", "trailing ", "",
                                                   "no\u00a0break", "umlaut \u00a8 sign", "it's the dog's 42nd bone."]
    texts += [" " + t for t in texts]
    whole = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    assert encode_chunked(backend, texts) == whole
    assert encode(tok, texts * 80, leading_space=False) == whole * 80  # through encode, past CHUNKED_FROM texts
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # splits differently: not chunked
    assert encode_chunked(backend, texts) is None
