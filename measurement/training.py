"""One SGD loop for baseline training, short fine-tunes (N steps) and long fine-tunes (epochs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.datasets import Split

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop_flip(pad: int, flip: bool) -> Augment:
    """Per-sample random crop after zero padding (and optional horizontal flip), on a whole batch."""

    def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad))
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
        out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
        if flip:
            mask = torch.rand(n, generator=g) < 0.5
            out[mask] = out[mask].flip(-1)
        return out

    return augment


def default_augment(dataset: str, input_size: int) -> Augment | None:
    if dataset == "synthetic":
        return None
    pad = max(1, input_size // 8)
    return random_crop_flip(pad, flip=dataset in {"fashion-mnist", "cifar10"})


@dataclass
class TrainConfig:
    steps: int
    lr: float
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | constant
    seed: int = 0


@dataclass(frozen=True)
class Distillation:
    """Knowledge distillation from a teacher (the unpruned base): the student also matches the teacher's
    softened outputs, the standard way to recover accuracy after pruning (Hinton et al. 2015; ModelOpt's
    prune + distill). loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy."""

    teacher: nn.Module
    temperature: float = 4.0
    alpha: float = 0.9

    def loss(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.teacher(x)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1), log_target=True,
                        reduction="batchmean") * t * t
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(logits, y)


ProgressFn = Callable[[int, int, float], None]  # (step, total, loss)


def train(model: nn.Module, data: Split, cfg: TrainConfig, augment: Augment | None = None,
          progress: ProgressFn | None = None, distill: Distillation | None = None) -> float:
    """Run `cfg.steps` SGD steps over reshuffled epochs of `data`; returns the mean loss of the last 50 steps."""
    if cfg.steps <= 0:
        return float("nan")
    if distill is not None:
        distill.teacher.eval()
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=True)
    sched = _schedule(opt, cfg)
    model.train()
    step, recent = 0, list[float]()
    while step < cfg.steps:
        for x, y in data.batches(cfg.batch_size, shuffle=True, generator=g):
            if len(y) < 2:
                continue  # BatchNorm cannot train on a single sample
            if augment is not None:
                x = augment(x, g)
            logits = model(x)
            loss = distill.loss(logits, x, y) if distill is not None else F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            recent = [*recent[-49:], float(loss.detach())]
            if progress is not None:
                progress(step, cfg.steps, recent[-1])
            if step >= cfg.steps:
                break
    model.eval()
    return sum(recent) / len(recent)


def epochs_to_steps(epochs: float, n_samples: int, batch_size: int) -> int:
    return math.ceil(epochs * n_samples / batch_size)


def _schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle" and cfg.steps >= 8:  # shorter runs have no room for a warm-up phase
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.25)
    if cfg.schedule in ("cosine", "onecycle"):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def fit(model: nn.Module, data: Split, dataset: str, epochs: float, lr: float, batch_size: int, seed: int,
        schedule: str = "onecycle", progress: ProgressFn | None = None, distill: Distillation | None = None) -> float:
    """Epoch-based training with the dataset's default augmentation (baseline training and final fine-tunes)."""
    steps = epochs_to_steps(epochs, len(data), batch_size)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, schedule=schedule, seed=seed)
    return train(model, data, cfg, default_augment(dataset, int(data.x.shape[-1])), progress, distill)
