"""The training loop: Adam on the (beta-weighted, annealed, free-bits) negative ELBO, or the IWAE bound.

Data-parallel when started by torchrun (DistributedDataParallel, gloo on CPU, nccl on GPU). Every
rank draws the same permutation, binarization and noise for the *global* batch and keeps its own
slice, so N processes compute the same update as one process up to floating-point noise. Each rank's
loss is its *share* of the global batch mean (sums divided by the global batch size), so uneven or
empty slices weigh every example as one process would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist

try:
    from tqdm import tqdm
except ImportError:  # a bare torch machine (benchmarks/gpu_check.py): no progress bar; the epoch lines remain
    def tqdm(iterable: Any, **_: Any) -> Any:  # type: ignore[no-redef]
        return iterable

from model.config import VAEConfig
from model.losses import free_bits_kl, iwae_bound
from model.vae import VAE, MonteCarloTerms
from training.averaging import WeightAverage
from training.checkpoint import save_checkpoint
from training.config import Precision, TrainConfig
from training.data import Dataset
from training.evaluate import collapsed_dimensions, latent_statistics, score_examples
from training.precision import PrecisionDecision, log_decision, rank_zeros_choice, resolve_precision
from training.resume import Progress, read_resume_record, restore, resume_record

log = logging.getLogger("vaeserve.train")


@dataclass
class TrainResult:
    model: VAE
    history: list[dict[str, Any]]
    best_path: Path
    last_path: Path


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present (the local rank's GPU under torchrun)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and dist.is_initialized():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)  # NCCL collectives (barrier) use the current device
    return torch.device(device)


def init_distributed() -> tuple[int, int]:
    """(rank, world_size); joins the process group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index tensors of a fresh permutation; the last short batch is kept."""
    perm = torch.randperm(n, generator=gen)
    yield from perm.split(batch_size)


def train(
    model_config: VAEConfig, train_config: TrainConfig, data: Dataset, out_dir: Path,
    on_epoch: Callable[[dict[str, Any], VAE], bool] | None = None, resume: bool = False,
) -> TrainResult:
    """Train, keep the best checkpoint on validation -ELBO, write metrics.jsonl; returns the final model.

    on_epoch(record, model) is called after each epoch; returning True stops training (benchmarks).
    resume: continue the run in out_dir from its last.pt (training/resume.py).
    """
    rank, world = init_distributed()
    if world > 1 and rank == 0:
        log.info("data-parallel training: %d processes (%s backend)", world, dist.get_backend())
    cfg = train_config
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if model_config.prior == "vampprior" and cfg.free_bits > 0:
        raise ValueError("free_bits: floors the closed-form KL per latent dimension, which a VampPrior (a mixture) "
                         "does not have; use kl_warmup_steps, or the standard prior")
    model = VAE(model_config).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)  # identical on every rank
    train_x = torch.from_numpy(data.train_x).to(device)
    if data.mean is not None:
        train_x = (train_x - torch.from_numpy(data.mean).to(device)) / torch.from_numpy(data.std).to(device)
    if model.prior is not None:  # before DDP (which broadcasts rank 0's weights) and the average copy it
        model.prior.initialize(train_x, gen)
    saved = read_resume_record(out_dir / "last.pt", model_config=model_config, train_config=cfg,
                               data_spec=data.spec.to_dict() if data.spec else None) if resume else None
    if saved is not None:  # the precision the run used, not a new probe's choice
        cfg = replace(cfg, precision=saved["train_config"]["precision"])
    decision = _choose_precision(model, train_x, cfg, device, world=world)
    if rank == 0:
        log_decision(decision)
    cfg = replace(cfg, precision=decision.precision)  # saved train_config: what the run used
    ddp: torch.nn.Module = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # fused: one kernel for all parameters (one noisy A/B on CPU: 12.2 vs 16.9 ms per bf16 step of the default model).
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type in ("cpu", "cuda"))
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    # What validation, checkpoints and export see: the average when there is one.
    evaluated = cast(VAE, average.module) if average is not None else model
    val_x = _standardized(data, data.val_x)
    binarize = cfg.binarize and model_config.likelihood == "bernoulli"
    extra = _checkpoint_extra(cfg, data, decision)
    progress = Progress()
    if saved is not None:
        extra["precision"] = saved["precision"]
        progress = restore(saved["resume"], model=model, optimizer=optimizer, average=average, gen=gen)
        if rank == 0:
            log.info("resuming %s after epoch %d (step %d; best validation -elbo %.2f at epoch %d)%s", out_dir,
                     progress.epoch, progress.step, progress.best_val, progress.best_epoch,
                     "; it had finished (early stopping or --max-steps): nothing to resume" if progress.finished else "")
    history, step = progress.history, progress.step
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    metrics_file = (out_dir / "metrics.jsonl").open("w") if rank == 0 else None
    if metrics_file is not None:  # a resumed run's file: the epochs last.pt holds (a later partial one is redone)
        metrics_file.writelines(json.dumps(record) + "\n" for record in history)
    n_batches = (len(train_x) + cfg.batch_size - 1) // cfg.batch_size
    total_steps = min(cfg.epochs * n_batches, cfg.max_steps or cfg.epochs * n_batches)
    for epoch in range(progress.epoch + 1, 0 if progress.finished else cfg.epochs + 1):
        model.train()
        warming_up = step < cfg.kl_warmup_steps  # the epoch starts inside the KL warm-up
        start = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)
        seen = 0
        bar = tqdm(batches(len(train_x), cfg.batch_size, gen), total=n_batches, desc=f"epoch {epoch}",
                   disable=rank != 0 or None, leave=False)
        for idx in bar:
            x = train_x[idx]  # (B, F) the global batch
            if binarize:
                x = torch.bernoulli(x.cpu(), generator=gen).to(device)
            eps = torch.randn(len(idx), cfg.train_k, model_config.latent_dim, generator=gen).to(device)
            x, eps = x[rank::world], eps[rank::world]  # this rank's slice
            loss, recon, kl = _loss(ddp, x, eps, cfg, step, global_batch=len(idx), world=world,
                                    mixture_prior=model.prior is not None)
            if cfg.lr_schedule != "constant":
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr_at(step, total_steps)
            optimizer.zero_grad(set_to_none=True)
            (loss * world).backward()  # DDP averages gradients over ranks; the shares sum to the batch mean
            optimizer.step()
            if average is not None:
                average.update()
            sums += torch.tensor([loss.item(), recon.item(), kl.item()], dtype=torch.float64) * len(idx)
            seen += len(x)
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        if world > 1:
            packed = torch.cat([sums, torch.tensor([seen], dtype=torch.float64)])
            dist.all_reduce(packed)
            sums, seen = packed[:3], int(packed[3].item())
        seconds = time.perf_counter() - start
        record = _epoch_record(evaluated, val_x, cfg, epoch, step, sums / max(seen, 1), seen, seconds, device)
        history.append(record)
        is_best = progress.observe(record["val_neg_elbo"], epoch=epoch, warming_up=warming_up)
        progress.epoch, progress.step = epoch, step
        progress.finished = (bool(cfg.max_steps and step >= cfg.max_steps)
                             or progress.patience_exhausted(cfg.patience_epochs))
        if rank == 0:
            # The time left at the pace of the epochs so far: a log file shows progress too, not only tqdm.
            record["eta_s"] = round(sum(r["seconds"] for r in history) / len(history)
                                    * (min(cfg.epochs, -(-total_steps // n_batches)) - epoch), 1)
            _report(record, history[-2] if len(history) > 1 else None, metrics_file, at_most=cfg.patience_epochs > 0)
            meta = {**extra, "epoch": epoch, "val_neg_elbo": record["val_neg_elbo"]}
            save_checkpoint(last_path, model=evaluated, extra={
                **meta, "resume": resume_record(model=model, optimizer=optimizer, average=average, gen=gen,
                                                progress=progress)})
            if is_best:
                save_checkpoint(best_path, model=evaluated, extra=meta)
            if progress.patience_exhausted(cfg.patience_epochs):
                log.info("early stopping after epoch %d: validation -elbo %.2f (epoch %d) not improved for %d epochs",
                         epoch, progress.best_val, progress.best_epoch, progress.stale_epochs)
        if progress.finished or (on_epoch is not None and on_epoch(record, evaluated)):
            break
    if metrics_file:
        metrics_file.close()
    best_record = next((r for r in history if r["epoch"] == progress.best_epoch), None)
    if best_record is not None:
        _collapse_summary(best_record, cfg)
    if world > 1:
        dist.barrier()
    return TrainResult(model=evaluated.eval(), history=history, best_path=best_path, last_path=last_path)


def _choose_precision(model: VAE, train_x: torch.Tensor, cfg: TrainConfig, device: torch.device, *,
                      world: int) -> PrecisionDecision:
    """training.precision's choice, its probe timing real training steps of this model on a real-size
    batch; every rank then uses rank 0's choice (DDP needs one precision)."""
    x = train_x[:cfg.batch_size]  # (B, F) real rows: binarizing them would not change the step's cost
    noise = torch.Generator().manual_seed(0)  # its own: the run's generators are not advanced
    eps = torch.randn(len(x), cfg.train_k, model.config.latent_dim, generator=noise).to(device)

    def step(precision: Precision) -> None:
        # The bare model, not DDP: no collectives, so ranks probe independently.
        loss, _, _ = _loss(model, x, eps, replace(cfg, precision=precision), 0, global_batch=len(x), world=1,
                           mixture_prior=model.prior is not None)
        loss.backward()

    decision = resolve_precision(cfg.precision, device=device, step=step)
    model.zero_grad(set_to_none=True)  # the probe's gradients are not the first step's
    return rank_zeros_choice(decision, device) if world > 1 else decision


def _loss(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, cfg: TrainConfig, step: int, *,
          global_batch: int, world: int, mixture_prior: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's shares of (loss, reconstruction NLL, KL) of the global batch; summed over ranks they
    are the batch means. The loss uses free bits and the KL weight."""
    autocast = (torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)
                if cfg.precision == "bf16" else contextlib.nullcontext())
    with autocast:
        terms = model(x, eps)  # through DDP's forward when distributed, so gradients are all-reduced
    draws = terms.log_px_features.shape[1]  # K: 1 for the ELBO
    recon = -terms.log_px_features.float().sum() / (global_batch * draws)
    if cfg.objective == "iwae":
        kl = terms.kl.float().sum() / global_batch
        return _iwae_loss(terms, cfg.kl_weight(step), global_batch=global_batch), recon.detach(), kl.detach()
    if mixture_prior:  # the VampPrior's K-sample KL estimate: no per-dimension KL for free bits to floor
        kl = terms.kl.float().sum() / global_batch
        return recon + cfg.kl_weight(step) * kl, recon.detach(), kl.detach()
    kl_dims = terms.kl_dims.float().sum(0) / global_batch  # (D,) this rank's share of the batch-mean KL
    loss = recon + cfg.kl_weight(step) * _free_bits_share(kl_dims, cfg.free_bits, world)
    return loss, recon.detach(), kl_dims.sum().detach()


def _iwae_loss(terms: MonteCarloTerms, kl_weight: float, *, global_batch: int) -> torch.Tensor:
    """This rank's share of the -IWAE bound (Burda et al. 2015 eq. 8), the log p(z) - log q(z|x) part of
    each log weight scaled by kl_weight, so KL warm-up anneals it as it does the ELBO's KL."""
    log_px = terms.log_px_features.float().sum(-1)  # (B, K)
    log_weights = log_px + kl_weight * (terms.log_weights.float() - log_px)  # (B, K)
    return -iwae_bound(log_weights).sum() / global_batch


def _free_bits_share(kl_dims: torch.Tensor, free_bits: float, world: int) -> torch.Tensor:
    """free_bits_kl with the floor decided on the *global* batch-mean KL, so every rank keeps the same
    dimensions (the all-reduce is the only distributed part; the math is in model/losses.py)."""
    batch_kl = kl_dims.detach().clone()  # (D,)
    if world > 1 and free_bits > 0:
        dist.all_reduce(batch_kl)
    return free_bits_kl(kl_dims, free_bits, batch_kl=batch_kl, shares=world)


def _standardized(data: Dataset, x: np.ndarray) -> np.ndarray:
    if data.mean is None:
        return x
    return ((x - data.mean) / data.std).astype(np.float32)


def _epoch_record(model: VAE, val_x: np.ndarray, cfg: TrainConfig, epoch: int, step: int,
                  means: torch.Tensor, seen: int, seconds: float, device: torch.device) -> dict[str, Any]:
    """Train means, validation -ELBO (fixed noise), per-dimension KL and active units."""
    val = score_examples(model, val_x, k=1, seed=12345, device=str(device))
    stats = latent_statistics(model, val_x, active_threshold=cfg.active_unit_threshold, device=str(device))
    collapsed = collapsed_dimensions(stats["kl_per_dim"], stats["activity_per_dim"],
                                     kl_threshold=cfg.collapse_kl_threshold,
                                     active_threshold=cfg.active_unit_threshold)
    return {
        "epoch": epoch, "step": step, "loss": float(means[0]), "reconstruction_nll": float(means[1]),
        "kl": float(means[2]), "kl_weight": cfg.kl_weight(step), "val_neg_elbo": float(val["elbo_score"].mean()),
        "active_units": stats["active_units"], "collapsed_dims": collapsed, "kl_per_dim": stats["kl_per_dim"],
        "seconds": round(seconds, 3), "examples_per_s": round(seen / max(seconds, 1e-9), 1),
    }


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _report(record: dict[str, Any], previous: dict[str, Any] | None, metrics_file: Any, *,
            at_most: bool = False) -> None:
    """The epoch's log line and metrics.jsonl line; at_most: early stopping may end the run sooner."""
    latent_dim = len(record["kl_per_dim"])
    log.info("epoch %3d | loss %.2f | recon %.2f | kl %.2f | val -elbo %.2f | active %d/%d | %.1fs | %.0f ex/s | "
             f"{'at most' if at_most else 'about'} %s left", record["epoch"], record["loss"], record["reconstruction_nll"],
             record["kl"], record["val_neg_elbo"], record["active_units"], latent_dim, record["seconds"], record["examples_per_s"],
             _duration(record.get("eta_s", 0.0)))
    # Said when the set changes, not every epoch: a model that settles on 16 of 32 dimensions is not
    # news 56 times. The one warning is the summary at the end (_collapse_summary).
    collapsed = record["collapsed_dims"]
    if collapsed != (previous["collapsed_dims"] if previous else []):
        if collapsed:
            log.info("collapsed latent dimensions now %d of %d: %s", len(collapsed), latent_dim, collapsed)
        else:
            log.info("no collapsed latent dimensions now")
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()


def _collapse_summary(record: dict[str, Any], cfg: TrainConfig) -> None:
    """One warning, after training, when the best checkpoint has collapsed dimensions: what it means and what to try."""
    collapsed, latent_dim = record["collapsed_dims"], len(record["kl_per_dim"])
    if not collapsed:
        return
    log.warning("posterior collapse in the best checkpoint (epoch %d): %d of %d latent dimensions carry no "
                "information (average KL < %.3g nats or activity <= %.3g): %s. Their posterior is the prior "
                "for every input, so the decoder ignores them and the model works as a %d-dimensional VAE: "
                "samples, reconstructions and anomaly scores are unaffected, but those dimensions of /encode's "
                "mu are ~0 for every item and flat in the page's traversals. This is common and not an error. "
                "To have more dimensions used, try a longer --kl-warmup-steps, --free-bits (e.g. 0.1) or "
                "--beta below 1; to save the unused ones, a smaller --latent-dim. Compare the test NLL of "
                "`vaeserve evaluate` before keeping either.", record["epoch"], len(collapsed), latent_dim,
                cfg.collapse_kl_threshold, cfg.active_unit_threshold, collapsed,
                latent_dim - len(collapsed))


def _checkpoint_extra(cfg: TrainConfig, data: Dataset, decision: PrecisionDecision) -> dict[str, Any]:
    """JSON-able metadata saved beside the weights."""
    extra: dict[str, Any] = {
        "train_config": cfg.to_dict(),
        "precision": decision.to_dict(),  # requested, used, reason (and the probe's timings)
        "dataset": {"name": data.name, **_jsonable(data.info)},
        "data_spec": data.spec.to_dict() if data.spec else None,
    }
    if data.mean is not None and data.std is not None:
        extra["standardization"] = {"mean": data.mean.tolist(), "std": data.std.tolist()}
    return extra


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in info.items()}
