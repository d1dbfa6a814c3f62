"""The fused linear + cross-entropy gives the plain Hugging Face loss and gradients, without full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from babyllama.config import ModelConfig
from babyllama.models import build_model
from babyllama.train.fused_ce import fused_lm_loss, linear_cross_entropy
from babyllama.train.objective import Batch, LMObjective

SPECIAL = {"pad": 0, "bos": 1, "eos": 2}


def test_matches_cross_entropy_over_several_chunks_with_ignored_rows() -> None:
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 50, (3, 7))
    labels[1, 2:5] = -100
    ours = linear_cross_entropy(hidden, weight, labels, chunk_elements=50 * 4)  # 4 rows per chunk: 6 chunks
    ours.backward(torch.tensor(0.7, dtype=torch.float64))
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = F.cross_entropy((hidden @ weight.T)[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=-100)
    (ref * 0.7).backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # untied and tied output embeddings
def test_model_loss_and_every_gradient_match_the_plain_step(arch: str) -> None:
    m = ModelConfig(name="m", arch=arch, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                    max_position_embeddings=32)
    torch.manual_seed(0)
    model = build_model(m, 300, SPECIAL).double()  # HF's loss still upcasts to fp32: fp32-level agreement
    x = torch.randint(3, 300, (4, 24))
    plain = model(input_ids=x, labels=x, use_cache=False).loss
    plain.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    fused = fused_lm_loss(model, x)
    fused.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-7, msg=n)
    # the head is restored: the model still returns vocabulary logits, and the state dict is unchanged
    assert model(input_ids=x, use_cache=False).logits.shape == (4, 24, 300)
    assert set(model.state_dict()) == set(ref) | ({"lm_head.weight"} if arch == "gpt2" else set())
    with torch.no_grad():
        assert fused_lm_loss(model, x).item() == pytest.approx(fused.item(), rel=1e-12)


def test_lm_objective_switch_gives_the_same_loss() -> None:
    m = ModelConfig(name="m", arch="llama", hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                    max_position_embeddings=16)
    torch.manual_seed(0)
    model = build_model(m, 100, SPECIAL)
    batch = Batch(input_ids=torch.randint(3, 100, (2, 16)), window_ids=torch.full((2,), -1))
    plain, fused = LMObjective().loss(model, batch)[0], LMObjective(fused=True).loss(model, batch)[0]
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    assert LMObjective(fused=True).fingerprint() == LMObjective().fingerprint()  # same maths: same resume identity
