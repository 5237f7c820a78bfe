"""Margin losses over a normalised FC head: one combined form covering ArcFace and CosFace.

The head holds one unit vector per training identity; its output is the cosine between each
embedding and each identity. The loss adds a margin to the cosine of the true identity and
scales every logit by s, then takes the cross-entropy:

    target logit   s · (cos(m1·θ + m2) − m3)        θ = angle to the true identity
    other logits   s · cos θ_j

    ArcFace   (m1, m2, m3) = (1, 0.5, 0)   additive angular margin
    CosFace   (m1, m2, m3) = (1, 0, 0.4)   additive cosine margin (MaskGate's default)

The head exists only to train the backbone: it is thrown away after training (the exporter
saves the backbone alone), since the door's people are never training identities.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Cosines are clamped this far inside ±1 before acos: its gradient is infinite at ±1.
_ACOS_EPS = 1e-6


class MarginHead(nn.Module):
    """cos θ between L2-normalised embeddings and L2-normalised per-identity weights."""

    def __init__(self, num_classes: int, embedding_size: int = 512) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a margin head needs at least 2 identities, got {num_classes}")
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # float32 even under autocast: cosines near ±1 need the mantissa.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            e = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return e @ w.t()


class CombinedMarginLoss(nn.Module):
    """Cross-entropy over s·(cos(m1·θ + m2) − m3) on the target logit and s·cos θ elsewhere.

    Beyond θ_max = (π − m2) / m1, cos(m1·θ + m2) would start to rise again as θ grows, so a
    sample pointing away from its identity would be rewarded for turning further away. Past
    that angle the target logit becomes cos θ − (1 + cos θ_max) − m3 instead: it keeps falling
    with θ and meets the margin curve at θ_max (both are −1 − m3 there), so the loss stays
    continuous and monotonic. With `easy_margin` the margin is applied only where cos θ > 0
    (a softer start for a network that has not separated anything yet).
    """

    def __init__(
        self,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.4,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        if s <= 0:
            raise ValueError(f"scale s must be positive, got {s}")
        if m1 < 1.0 or m2 < 0.0 or m3 < 0.0 or m2 >= math.pi:
            raise ValueError(f"margins need m1 >= 1, 0 <= m2 < π, m3 >= 0; got {m1}, {m2}, {m3}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin = easy_margin
        self.theta_max = (math.pi - self.m2) / self.m1
        self._angular = self.m1 != 1.0 or self.m2 != 0.0

    def target_cosine(self, cos: torch.Tensor) -> torch.Tensor:
        """The margin-penalised cosine of the true identity (before scaling)."""
        if not self._angular:
            phi = cos - self.m3  # CosFace: no angle needed, exact and cheap
        else:
            theta = torch.acos(cos.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))
            phi = torch.where(
                theta <= self.theta_max,
                torch.cos(self.m1 * theta + self.m2) - self.m3,
                cos - (1.0 + math.cos(self.theta_max)) - self.m3,
            )
        if self.easy_margin:
            phi = torch.where(cos > 0, phi, cos)
        return phi

    def logits(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (N, C) with the margin on each row's true identity."""
        cosine = cosine.float()
        rows = torch.arange(cosine.shape[0], device=cosine.device)
        target = self.target_cosine(cosine[rows, labels])
        out = cosine.clone()
        out[rows, labels] = target
        return out * self.s

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(cosine, labels), labels)

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, easy={self.easy_margin}"


class ArcFace(CombinedMarginLoss):
    """Additive angular margin: s·cos(θ + m) on the target."""

    def __init__(self, s: float = 64.0, m: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, easy_margin=easy_margin)


class CosFace(CombinedMarginLoss):
    """Additive cosine margin: s·(cos θ − m) on the target."""

    def __init__(self, s: float = 64.0, m: float = 0.4) -> None:
        super().__init__(s=s, m1=1.0, m2=0.0, m3=m)
