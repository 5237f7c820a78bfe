"""Training for real: a tiny iresnet learns synthetic identities; resume is deterministic."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.kit.config import TrainConfigError, parse_train_config
from models.kit.evaluation import embed_crops, pair_scores, separation
from models.kit.train import build_model, load_backbone, lr_factor, seed_everything, train

N_IDS = 8
TINY = {"backbone": "edge", "widths": [4, 8, 16, 32], "blocks": [1, 1, 1, 1]}


def _identity(k: int) -> list[tuple[int, int, int, tuple[int, int, int]]]:
    """Identity k: 4 coloured blobs (x, y, radius, BGR) at places of its own."""
    rng = np.random.default_rng(1000 + k)
    return [
        (
            int(rng.integers(24, 88)),
            int(rng.integers(24, 88)),
            int(rng.integers(8, 20)),
            tuple(int(c) for c in rng.integers(0, 256, 3)),
        )
        for _ in range(4)
    ]


def _sample(k: int, seed: int) -> np.ndarray:
    """One "photo" of identity k: its blobs jittered, re-lit and noisy."""
    rng = np.random.default_rng(seed)
    img = np.full((112, 112, 3), 128, np.uint8)
    for x, y, r, colour in _identity(k):
        dx, dy = rng.integers(-4, 5, 2)
        cv2.circle(img, (x + int(dx), y + int(dy)), r, colour, -1)
    img = cv2.GaussianBlur(img, (5, 5), 0).astype(np.float32) * rng.uniform(0.8, 1.2)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def blob_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Person folders of aligned 112×112 "crops": 8 identities × 10 images."""
    root = tmp_path_factory.mktemp("blobs")
    for k in range(N_IDS):
        (root / f"id{k}").mkdir()
        for j in range(10):
            cv2.imwrite(str(root / f"id{k}" / f"{j}.png"), _sample(k, 100 * k + j))
    return root


def _config(root: Path, out: Path, **overrides: object) -> dict:
    cfg = {
        "data": {"train_dir": str(root), "format": "aligned"},
        "model": TINY,
        "loss": {"kind": "cosface", "s": 16.0, "m": 0.2},
        "optim": {"lr": 0.05, "warmup_steps": 0, "schedule": "poly"},
        "batch_size": 16,
        "max_steps": 40,
        "checkpoint_dir": str(out),
        "seed": 0,
        "device": "cpu",
        "threads": 2,
    }
    cfg.update(overrides)
    return cfg


def _held_out() -> tuple[np.ndarray, np.ndarray]:
    """Unseen photos of the training identities (other noise, jitter and light)."""
    crops = np.stack([_sample(k, 50_000 + 10 * k + j) for k in range(N_IDS) for j in range(6)])
    return crops, np.repeat(np.arange(N_IDS), 6)


def test_tiny_iresnet_learns_identities(blob_folder: Path, tmp_path: Path) -> None:
    cfg = parse_train_config(_config(blob_folder, tmp_path / "run"))
    crops, labels = _held_out()
    seed_everything(cfg.seed)
    before = separation(*pair_scores(embed_crops(build_model(cfg), crops), labels))

    result = train(cfg, progress=False)

    losses = list(result.losses.values())
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    model, ckpt = load_backbone(result.checkpoint)
    gen, imp = pair_scores(embed_crops(model, crops), labels)
    after = separation(gen, imp)
    assert after > before + 1.0, (before, after)
    assert gen.mean() - imp.mean() > 0.2
    assert ckpt["step"] == 40 and "head" in ckpt  # the head is saved for resume only
    assert (tmp_path / "run" / "train_log.jsonl").is_file()


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(
    blob_folder: Path, tmp_path: Path
) -> None:
    # Dropout makes the torch RNG matter; checkpoint_every writes the step-4 checkpoint.
    model = {**TINY, "dropout": 0.2}
    full = train(
        parse_train_config(
            _config(blob_folder, tmp_path / "a", max_steps=8, checkpoint_every=4, model=model)
        ),
        progress=False,
    )
    resumed = train(
        parse_train_config(
            _config(
                blob_folder,
                tmp_path / "b",
                max_steps=8,
                model=model,
                resume=str(tmp_path / "a" / "step00000004.pt"),
            )
        ),
        progress=False,
    )
    assert sorted(resumed.losses) == [5, 6, 7, 8]
    assert [resumed.losses[s] for s in range(5, 9)] == [full.losses[s] for s in range(5, 9)]
    a = torch.load(full.checkpoint, weights_only=False)["model"]
    b = torch.load(resumed.checkpoint, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = parse_train_config(
        _config(Path("x"), Path("y"), optim={"warmup_steps": 10, "schedule": "cosine"})
    ).optim
    assert lr_factor(0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(55, 100, cfg) == pytest.approx(0.5)
    assert lr_factor(100, 100, cfg) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_size": 1}, "batch_size"),
        ({"max_steps": None}, "epochs or max_steps"),
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"loss": {"kind": "sphereface"}}, "loss.kind"),
        ({"colour": "red"}, "colour"),
        ({"model": {"backbone": "r152"}}, "model.backbone"),
        ({"model": {"widths": [8, 8, 0, 8]}}, "model.widths"),
        (
            {"data": {"train_dir": "x", "format": "aligned", "mask_augment": {"probability": 0.5}}},
            "mesh points",
        ),
    ],
)
def test_invalid_configs_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        parse_train_config(_config(Path("x"), Path("y"), **change))


def test_default_loss_is_cosface() -> None:
    cfg = parse_train_config({"data": {"train_dir": "x"}, "checkpoint_dir": "y", "epochs": 1})
    assert cfg.loss.kind == "cosface" and cfg.loss.margins == (1.0, 0.0, 0.4)
    assert cfg.checkpoint_dir.is_absolute() and cfg.data.cache_dir is not None


def test_train_cli_help_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--config" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {train_dir: x}\ncheckpoint_dir: y\n", encoding="utf-8")
    assert main(["--config", str(bad), "--check"]) == 2
    assert "epochs or max_steps" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("data: {train_dir: x}\ncheckpoint_dir: y\nmax_steps: 3\n", encoding="utf-8")
    assert main(["--config", str(good), "--check", "--max-steps", "5"]) == 0
    assert '"max_steps": 5' in capsys.readouterr().out
