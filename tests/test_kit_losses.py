"""Margin losses: logits against their formulas on hand-made cosines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.kit.losses import ArcFace, CombinedMarginLoss, CosFace, MarginHead

COS = torch.tensor([[0.8, 0.1, -0.2], [0.3, 0.6, 0.0], [-0.5, 0.2, 0.9]])
LABELS = torch.tensor([0, 1, 0])


def _expected(cos: torch.Tensor, labels: torch.Tensor, s: float, target) -> torch.Tensor:
    out = cos.clone().double() * s
    for i, j in enumerate(labels.tolist()):
        out[i, j] = s * target(float(cos[i, j]))
    return out


def test_cosface_logits_match_formula() -> None:
    got = CosFace(s=64, m=0.4).logits(COS, LABELS)
    want = _expected(COS, LABELS, 64, lambda c: c - 0.4)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
    # Hand-checked numbers: row 0 target 64·(0.8 − 0.4) = 25.6, non-target 64·0.1 = 6.4.
    assert got[0, 0].item() == pytest.approx(25.6, abs=1e-4)
    assert got[0, 1].item() == pytest.approx(6.4, abs=1e-4)


def test_arcface_logits_match_formula() -> None:
    got = ArcFace(s=64, m=0.5).logits(COS, LABELS)
    want = _expected(COS, LABELS, 64, lambda c: math.cos(math.acos(c) + 0.5))
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=0)
    # cos(acos(0.8) + 0.5) = 0.8·cos 0.5 − 0.6·sin 0.5 = 0.414410...
    assert got[0, 0].item() / 64 == pytest.approx(
        0.8 * math.cos(0.5) - 0.6 * math.sin(0.5), abs=1e-5
    )


def test_combined_covers_arcface_and_cosface() -> None:
    torch.testing.assert_close(
        CombinedMarginLoss(64, 1.0, 0.5, 0.0).logits(COS, LABELS),
        ArcFace(64, 0.5).logits(COS, LABELS),
    )
    torch.testing.assert_close(
        CombinedMarginLoss(64, 1.0, 0.0, 0.4).logits(COS, LABELS),
        CosFace(64, 0.4).logits(COS, LABELS),
    )
    # All three margins at once: s·(cos(m1·θ + m2) − m3).
    got = CombinedMarginLoss(30, 1.2, 0.3, 0.2).logits(COS, LABELS)
    want = _expected(COS, LABELS, 30, lambda c: math.cos(1.2 * math.acos(c) + 0.3) - 0.2)
    torch.testing.assert_close(got.double(), want, atol=1e-3, rtol=0)


def test_past_theta_max_the_target_keeps_falling_and_is_continuous() -> None:
    loss = ArcFace(s=1.0, m=0.5)
    theta_max = math.pi - 0.5
    # Beyond θ_max: cos θ − (1 + cos θ_max), not cos(θ + m) (which would rise again).
    c = torch.tensor([math.cos(theta_max + 0.2)])
    assert loss.target_cosine(c).item() == pytest.approx(
        c.item() - 1 - math.cos(theta_max), abs=1e-6
    )
    thetas = torch.linspace(0.01, math.pi - 0.01, 2000, dtype=torch.float64)
    phi = loss.target_cosine(torch.cos(thetas))
    assert (phi[1:] <= phi[:-1] + 1e-9).all(), "the target logit must fall as θ grows"
    assert phi.diff().abs().max() < 0.01, "no jump at θ_max"


def test_easy_margin_leaves_negative_cosines_alone() -> None:
    loss = ArcFace(s=1.0, m=0.5, easy_margin=True)
    c = torch.tensor([-0.3, 0.7])
    phi = loss.target_cosine(c)
    assert phi[0].item() == pytest.approx(-0.3)
    assert phi[1].item() == pytest.approx(math.cos(math.acos(0.7) + 0.5), abs=1e-6)


def test_loss_is_cross_entropy_of_the_margin_logits() -> None:
    loss = CosFace(s=16, m=0.35)
    manual = -F.log_softmax(loss.logits(COS, LABELS), dim=1)[torch.arange(3), LABELS].mean()
    assert loss(COS, LABELS).item() == pytest.approx(manual.item(), rel=1e-6)


def test_gradients_stay_finite_at_cosine_one() -> None:
    cos = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], requires_grad=True)
    ArcFace()(cos, torch.tensor([0, 1])).backward()
    assert torch.isfinite(cos.grad).all()


def test_margin_head_outputs_cosines() -> None:
    torch.manual_seed(0)
    head = MarginHead(5, 8)
    emb = torch.randn(3, 8) * 10
    cos = head(emb)
    want = F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).t()
    torch.testing.assert_close(cos, want)
    assert cos.abs().max() <= 1.0 + 1e-6


@pytest.mark.parametrize(
    "kwargs",
    [{"s": 0.0}, {"m1": 0.5}, {"m2": -0.1}, {"m3": -0.1}, {"m2": 3.2}],
)
def test_bad_margins_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CombinedMarginLoss(**kwargs)
    with pytest.raises(ValueError):
        MarginHead(1, 8)
