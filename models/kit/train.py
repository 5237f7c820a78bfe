"""The training loop: backbone + margin head, AMP on CUDA, checkpoints, resume, evaluation.

Determinism: every random draw comes from the config's seed. Batches and flips are functions
of (seed, epoch, index) (see data.EpochBatchSampler), and a checkpoint carries the optimiser,
scheduler, AMP scaler and torch/NumPy/Python RNG states, so resuming from step k gives the
same losses from step k+1 on as a run that never stopped (on the same device and threads).
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from models.kit.backbones import IResNet, count_params, get_model
from models.kit.config import LossConfig, OptimConfig, TrainConfig
from models.kit.data import (
    AlignedSet,
    EpochBatchSampler,
    FaceDataset,
    drop_small_identities,
    load_folder,
    make_mask_augment,
    split_identities,
    steps_for,
)
from models.kit.evaluation import embed_crops, verification_report
from models.kit.losses import CombinedMarginLoss, MarginHead
from models.kit.progress import Progress

log = logging.getLogger(__name__)

LAST = "last.pt"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainResult:
    steps: int
    losses: dict[int, float] = field(default_factory=dict)  # step → loss (every step)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)  # step → report
    checkpoint: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Same results run to run; on CUDA this gives up cuDNN's autotuner (a few % of speed).
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda asked for, but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_model(cfg: TrainConfig) -> IResNet:
    m = cfg.model
    return get_model(m.backbone, m.embedding_size, m.dropout, widths=m.widths, blocks=m.blocks)


def build_loss(cfg: LossConfig) -> CombinedMarginLoss:
    m1, m2, m3 = cfg.margins
    return CombinedMarginLoss(s=cfg.s, m1=m1, m2=m2, m3=m3, easy_margin=cfg.easy_margin)


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then the chosen decay to 0."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(total - cfg.warmup_steps, 1)
    t = min((step - cfg.warmup_steps) / span, 1.0)
    if cfg.schedule == "poly":
        return (1.0 - t) ** 2
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save(state, tmp)
    tmp.replace(path)  # a run killed mid-write never leaves a half checkpoint as last.pt


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only=False: the checkpoint holds RNG states and the config as plain Python.
    # Only load checkpoints you wrote (pickle runs code).
    return torch.load(path, map_location="cpu", weights_only=False)


def load_backbone(path: Path) -> tuple[IResNet, dict[str, Any]]:
    """The backbone of a training checkpoint (the margin head is left behind), in eval mode."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig.model_validate(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _load_data(cfg: TrainConfig, progress: bool) -> tuple[AlignedSet, AlignedSet | None]:
    d = cfg.data
    assert d.cache_dir is not None  # filled in by TrainConfig.resolved
    train = load_folder(d.train_dir, d.format, d.cache_dir, d.pipeline_config, progress)
    train = drop_small_identities(train, d.min_images)
    if d.val_dir is not None:
        val = load_folder(d.val_dir, d.format, d.cache_dir, d.pipeline_config, progress)
        return train, drop_small_identities(val, 2)
    return split_identities(train, d.val_identities)


def _resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume is False:
        return None
    if cfg.resume is True:
        last = cfg.checkpoint_dir / LAST
        return last if last.is_file() else None
    if not Path(cfg.resume).is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {cfg.resume}")
    return Path(cfg.resume)


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """Train as `cfg` says; returns every step's loss, the evaluations and the last checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    if cfg.amp and not amp:
        log.info("amp is for CUDA; training in float32 on %s", device)
    if cfg.data.mask_augment.probability > 0:  # fail before the long preprocessing pass
        make_mask_augment(cfg.data.mask_augment.probability, cfg.data.mask_augment.db, cfg.seed)
    seed_everything(cfg.seed)

    train_set, val_set = _load_data(cfg, progress)
    log.info(
        "training on %d crops of %d identities; %s",
        len(train_set),
        train_set.num_classes,
        f"evaluating on {len(val_set)} crops of {val_set.num_classes}" if val_set else "no eval",
    )
    model = build_model(cfg).to(device)
    head = MarginHead(train_set.num_classes, cfg.model.embedding_size).to(device)
    criterion = build_loss(cfg.loss)
    log.info("%s: %.2f M parameters; %s", cfg.model.backbone, count_params(model) / 1e6, criterion)
    params = [p for p in (*model.parameters(), *head.parameters()) if p.requires_grad]
    optimizer = build_optimizer(params, cfg.optim)
    total = steps_for(len(train_set), cfg.batch_size, cfg.epochs, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, cfg.optim)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    step = 0
    result = TrainResult(steps=total)
    resume = _resume_path(cfg)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt["identities"] != train_set.identities:
            raise RuntimeError(
                f"{resume} was trained on other identities than {cfg.data.train_dir}"
            )
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d of %d", resume, step, total)

    dataset = FaceDataset(
        train_set,
        flip=cfg.data.flip,
        seed=cfg.seed,
        mask_probability=cfg.data.mask_augment.probability,
        mask_db=cfg.data.mask_augment.db,
    )
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, start_step=step)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.workers > 0,
    )
    # The loader's iterator draws its worker seed from torch's RNG: start it before the RNG
    # state is restored, so a resumed run continues from exactly the saved state.
    batches = iter(loader)
    if resume is not None:
        _set_rng_state(ckpt["rng"])
    cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    log_file = (cfg.checkpoint_dir / LOG_FILE).open("a", encoding="utf-8")

    def checkpoint(name: str) -> Path:
        path = cfg.checkpoint_dir / name
        save_checkpoint(
            path,
            {
                "step": step,
                "config": cfg.model_dump(mode="json"),
                "identities": train_set.identities,
                "model": model.state_dict(),
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
            },
        )
        return path

    def evaluate() -> None:
        if val_set is None:
            return
        report = verification_report(embed_crops(model, val_set.crops(), device), val_set.labels)
        result.evals[step] = report
        log.info(
            "step %d eval: AUC %.4f EER %.4f TAR@1e-2 %s d' %.2f",
            step,
            report["auc"],
            report["eer"],
            report["tar_at_far"]["1e-2"],
            report["separation"],
        )
        log_file.write(json.dumps({"step": step, "eval": report}) + "\n")

    bar = Progress(total, "train", unit="step", enabled=progress)
    bar.start_at(step)
    model.train()
    head.train()
    try:
        for x, y in batches:
            if step >= total:
                break
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                emb = model(x)
            # The margin and the softmax run in float32 (MarginHead and the loss cast).
            cos = head(emb)
            loss = criterion(cos, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradient, not the scaled one
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"loss became {value} at step {step}; lower optim.lr")
            result.losses[step] = value
            if step % cfg.log_every == 0 or step == total:
                acc = float((cos.detach().argmax(1) == y).float().mean())
                lr = scheduler.get_last_lr()[0]
                log.info("step %d/%d loss %.4f acc %.3f lr %.3g", step, total, value, acc, lr)
                log_file.write(
                    json.dumps({"step": step, "loss": value, "acc": acc, "lr": lr}) + "\n"
                )
                log_file.flush()
            bar.update(step, loss=value)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                evaluate()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                checkpoint(f"step{step:08d}.pt")
                checkpoint(LAST)
                _prune(cfg.checkpoint_dir, cfg.keep_checkpoints)
        evaluate()
        result.checkpoint = checkpoint(LAST)
        log.info("wrote %s at step %d", result.checkpoint, step)
    finally:
        log_file.close()
    return result


def _prune(folder: Path, keep: int) -> None:
    steps = sorted(folder.glob("step*.pt"))
    for old in steps[:-keep]:
        old.unlink()
