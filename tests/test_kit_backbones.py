"""iresnet backbones: shapes, parameter counts, the named variants."""

from __future__ import annotations

import pytest
import torch

from models.kit.backbones import ARCHS, count_macs, count_params, get_model

# Parameter counts of the published iresnets (millions), ±0.2 M.
PUBLISHED = {"r18": 24.0, "r34": 34.1, "r50": 43.6, "r100": 65.2}


@pytest.mark.parametrize("name", ["edge", "r18"])
def test_output_is_512_d(name: str) -> None:
    model = get_model(name).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 112, 112))
    assert y.shape == (2, 512)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_the_published_models(name: str) -> None:
    assert count_params(get_model(name)) / 1e6 == pytest.approx(PUBLISHED[name], abs=0.2)


def test_stage_depths_are_the_published_ones() -> None:
    from models.kit.backbones import IBasicBlock

    for name, (blocks, _) in ARCHS.items():
        model = get_model(name)
        got = tuple(sum(isinstance(m, IBasicBlock) for m in stage) for stage in model.stages)
        assert got == blocks, name
    assert ARCHS["r50"][0] == (3, 4, 14, 3) and ARCHS["r100"][0] == (3, 13, 30, 3)


def test_edge_variant_is_much_lighter_than_r18() -> None:
    edge, r18 = get_model("edge"), get_model("r18")
    assert count_macs(edge) * 4 < count_macs(r18)
    assert count_params(edge) < count_params(r18) / 2
    assert 0.4e9 < count_macs(edge) < 0.7e9  # the docstring's 0.55 G


def test_dropout_embedding_size_and_names() -> None:
    model = get_model("edge", embedding_size=128, dropout=0.2)
    assert model.fc.out_features == 128 and model.dropout.p == 0.2
    assert not model.features.weight.requires_grad  # the last BN's scale stays fixed
    with pytest.raises(ValueError, match="unknown backbone"):
        get_model("r152")
    with pytest.raises(ValueError):
        get_model("edge", dropout=1.0)


def test_overrides_make_a_tiny_net() -> None:
    model = get_model("edge", widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1))
    assert count_params(model) < 500_000
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 512)
