"""The training loop: recipes, Adam-family optimisers with one-cycle, checkpoints, progress with ETA.

train.py is the command line around it; this module holds what a run does once the data is on the device.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

# Dot-product factors of arch "fused" unless --n-dot says otherwise. On a MovieLens 100K split (seeds
# 0/1, this recipe otherwise) the fused net's RMSE was 0.8951/0.8984 with 16 factors and weight decay
# 0.3, 0.8926/0.8940 with 16 and 0.5 (the default), 0.8936/0.8956 with 8, 0.8996/0.8998 with 32; the
# lesson's embedding-net 0.9036/0.9030 (0.9027 with decay 0.5).
FUSED_N_DOT = 16


@dataclass
class TrainConfig:
    """Training hyperparameters; the defaults are the recipe tuned on MovieLens 100K."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 3e-3
    wd: float = 0.5
    n_factors: int = 64
    nh: int = 128
    p1: float = 0.4
    p2: float = 0.5
    bias: bool = True
    arch: str = "fused"
    n_dot: int = FUSED_N_DOT
    val_frac: float = 0.1
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    compile: bool = False


# The ML-100K recipe (TrainConfig's defaults) was tuned for ~350 steps per epoch on 90,000 rows.
# On ML-25M-shaped data of 2.5M ratings its dropout and weight decay hold the model near the
# biases-only fit (val RMSE 0.77 against a floor of 0.50), and batch 256 makes an epoch 25x longer.
# From SCALE_FROM ratings, --recipe auto trains with SCALE_RECIPE and a batch that keeps the steps
# per epoch, and so the one-cycle schedule and the decay per epoch, as tuned. Weight decay 0.1 beat
# 0.03 (which overfits from epoch ~14) and 0.3 (which learns too slowly in 20 epochs) at 1M ratings:
# val RMSE 0.532 / 0.537 / 0.541 against a floor of 0.496 (BENCHMARKS.md, "Scale"). A hidden layer of
# 64 instead of 128 costs 0.002 of RMSE there and halves top-K over all movies (users x movies x nh).
RECIPE_KEYS = ("batch_size", "lr", "wd", "n_factors", "nh", "p1", "p2")
SCALE_FROM = 1_000_000
STEPS_PER_EPOCH = 352  # ML-100K: ceil(90,000 / 256)
# The fused net is not the scale recipe's architecture: at 1M synthetic ratings with this recipe it
# overfit (val RMSE 0.549 against 0.532 for the embedding-net, floor 0.496; its dot factors memorise
# under decay 0.1), so from 1M ratings the recipe keeps the embedding-net until a fused recipe is measured.
SCALE_RECIPE = {"lr": 1e-2, "wd": 0.1, "n_factors": 64, "nh": 64, "p1": 0.1, "p2": 0.0, "arch": "embedding-net"}


def recipe_for(n_ratings: int, n_train: int, name: str = "auto") -> tuple[str, dict]:
    """The recipe's name and its values of RECIPE_KEYS for a data set of that size."""
    if name == "auto":
        name = "scale" if n_ratings >= SCALE_FROM else "ml100k"
    if name == "ml100k":
        return name, {k: getattr(TrainConfig, k) for k in RECIPE_KEYS}
    batch = 256 * math.ceil(n_train / (256 * STEPS_PER_EPOCH))
    return name, {"batch_size": batch, **SCALE_RECIPE}


def pick_device(name: str) -> torch.device:
    """`auto` means CUDA when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def rmse(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Root mean squared error as a float."""
    return math.sqrt(torch.mean((pred.float() - target.float()) ** 2).item())


@torch.no_grad()
def predict_all(model: torch.nn.Module, users: torch.Tensor, movies: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Predictions for many pairs, in chunks to bound memory."""
    return torch.cat([model(users[i : i + chunk], movies[i : i + chunk]) for i in range(0, len(users), chunk)])


CHECKPOINT_DIR = "checkpoint"  # inside --out while training; removed once the artifact is written
CHECKPOINT_FILE = "state.pt"
ARGS_FILE = "args.json"


def epoch_done(epoch: int) -> None:
    """Called after each epoch's checkpoint is on disk; tests replace it to simulate a killed run."""


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> tuple[list, list]:
    """The optimizers and their one-cycle schedules (one pair per parameter group kind)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25, div_factor=25, final_div_factor=1e4
    )
    return [opt], [sched]


def save_checkpoint(folder: Path, state: dict) -> None:
    """Write the training state atomically, so a kill mid-write leaves the previous epoch's state."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, folder / CHECKPOINT_FILE)


def training_state(model, opts, scheds, gen: torch.Generator, history: list[dict]) -> dict:
    """Everything needed to continue after the last finished epoch exactly as if never stopped."""
    rng = {"shuffle": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "epoch": len(history),
        "history": history,
        "model": model.state_dict(),
        "optimizers": [o.state_dict() for o in opts],
        "schedulers": [s.state_dict() for s in scheds],
        "rng": rng,
    }


def restore_state(state: dict, model, opts, scheds, gen: torch.Generator) -> list[dict]:
    """Load a training_state() into the live objects; returns the history so far."""
    model.load_state_dict(state["model"])
    for obj, saved in (*zip(opts, state["optimizers"], strict=True), *zip(scheds, state["schedulers"], strict=True)):
        obj.load_state_dict(saved)
    gen.set_state(state["rng"]["shuffle"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return list(state["history"])


def run_epoch(model, forward, train, cfg: TrainConfig, opts, scheds, perm: torch.Tensor, bar) -> float:
    """One pass over the shuffled training rows through `forward` (the model, maybe compiled); the mean loss."""
    tu, tm, tr = train
    model.train()
    total = torch.zeros((), device=tr.device)
    for step, start in enumerate(range(0, len(tr), cfg.batch_size)):
        idx = perm[start : start + cfg.batch_size]
        loss = torch.nn.functional.mse_loss(forward(tu[idx], tm[idx]), tr[idx])
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        for sched in scheds:
            sched.step()
        total += loss.detach() * len(idx)
        bar.update()
        if not bar.disable and step % 50 == 0:  # .item() waits for the device: only for a visible bar
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return total.item() / len(tr)


def clock(seconds: float) -> str:
    """A duration as 1h02m03s / 2m03s / 3.4s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m{s:02d}s" if m >= 60 else f"{m}m{s:02d}s"


def fit(
    model, train, val, cfg: TrainConfig, device: torch.device, quiet: bool = False, checkpoint: Path | None = None
) -> list[dict]:
    """AdamW + one-cycle over shuffled index slices of device-resident tensors; returns per-epoch history.

    With `checkpoint`, each epoch's state is saved there, and a state already there is continued.
    """
    (vu, vm, vr), n = val, len(train[2])
    steps = math.ceil(n / cfg.batch_size)
    opts, scheds = make_optimizers(model, cfg, cfg.epochs * steps)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    forward = torch.compile(model) if cfg.compile else model  # shares the weights: export stays eager
    history: list[dict] = []
    if checkpoint is not None and (checkpoint / CHECKPOINT_FILE).exists():
        state = torch.load(checkpoint / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        history = restore_state(state, model, opts, scheds, gen)
        print(f"resumed after epoch {len(history)}/{cfg.epochs} from {checkpoint}", flush=True)
    # tqdm turns itself off when stdout is not a terminal; the per-epoch lines carry the ETA there.
    total_steps = cfg.epochs * steps
    bar = tqdm(total=total_steps, initial=len(history) * steps, disable=quiet or None, unit="batch", leave=False)
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        bar.set_description(f"epoch {epoch}/{cfg.epochs}")
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=device, generator=gen)
        row = {"epoch": epoch, "train_loss": run_epoch(model, forward, train, cfg, opts, scheds, perm, bar)}
        model.eval()
        row["val_loss"] = rmse(predict_all(model, vu, vm), vr) ** 2
        row["seconds"] = time.perf_counter() - t0
        row["val_rmse"] = math.sqrt(row["val_loss"])
        history.append(row)
        elapsed = sum(h["seconds"] for h in history)
        eta = elapsed / len(history) * (cfg.epochs - epoch)
        tqdm.write(
            f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f}  val RMSE {row['val_rmse']:.4f}  "
            f"({row['seconds']:.1f}s, {n / row['seconds']:,.0f} ratings/s; elapsed {clock(elapsed)}, ETA {clock(eta)})"
        )
        sys.stdout.flush()
        if checkpoint is not None:
            save_checkpoint(checkpoint, training_state(model, opts, scheds, gen, history))
        epoch_done(epoch)
    bar.close()
    return history
