"""Test NLL by the published protocol, for a longer VampPrior run (or any checkpoint).

Trains with `vaeserve train` (a VampPrior by default), then evaluates with `vaeserve evaluate`: all
10,000 Fashion-MNIST test images binarized once (seed 0), K = 5000 importance samples, mean and
standard error over images. Prints the NLL beside the published rows it is compared with.

    .venv/bin/python benchmarks/nll.py --epochs 200 --latent-dim 40 --pseudo-inputs 500 --lr-schedule cosine --out runs/vampprior
    .venv/bin/python benchmarks/nll.py --checkpoint runs/default/best.pt      # evaluate only
    .venv/bin/python benchmarks/nll.py --epochs 1 --iwae-examples 50 --iwae-k 100 --out /tmp/nll-smoke

Run it under the CPU lock on a shared machine (`flock /tmp/cpu.lock ...`): it trains for hours and
evaluates for minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vaeserve.cli import main as vaeserve

# Norouzi et al. 2020, "Exemplar VAEs for Exemplar based Generation and Data Augmentation", Table 1:
# test NLL in nats on dynamically binarized Fashion-MNIST, MLP encoders and decoders, K = 5000.
PUBLISHED = (("VAE with a standard normal prior", 228.70), ("VampPrior (Tomczak & Welling 2018)", 227.35),
             ("Exemplar VAE (Norouzi et al. 2020)", 226.75))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="evaluate this checkpoint only (no training)")
    parser.add_argument("--out", type=Path, default=Path("runs/vampprior"), help="run folder of the training")
    parser.add_argument("--prior", choices=["standard", "vampprior"], default="vampprior")
    parser.add_argument("--pseudo-inputs", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--latent-dim", type=int, default=40)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    parser.add_argument("--kl-warmup-steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    parser.add_argument("--train-k", type=int, default=None, help="draws per example for --objective iwae")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="stop training after N steps (smoke runs)")
    parser.add_argument("--iwae-k", type=int, default=5000, help="importance samples per image")
    parser.add_argument("--iwae-examples", default="all", help="test images for the NLL: a count or all")
    return parser.parse_args(argv)


def train_args(args: argparse.Namespace) -> list[str]:
    extra = ["--train-k", str(args.train_k)] if args.train_k is not None else []
    return ["train", "--out", str(args.out), "--prior", args.prior, "--pseudo-inputs", str(args.pseudo_inputs),
            "--epochs", str(args.epochs), "--latent-dim", str(args.latent_dim), "--hidden", *map(str, args.hidden),
            "--lr", str(args.lr), "--lr-schedule", args.lr_schedule, "--kl-warmup-steps", str(args.kl_warmup_steps),
            "--batch-size", str(args.batch_size), "--objective", args.objective, "--seed", str(args.seed),
            "--max-steps", str(args.max_steps), *extra]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_s = None
    checkpoint = args.checkpoint
    if checkpoint is None:
        started = time.perf_counter()
        if vaeserve(train_args(args)) != 0:
            return 1
        train_s = time.perf_counter() - started
        checkpoint = args.out / "best.pt"
    evaluation = checkpoint.parent / "evaluation.json"
    if vaeserve(["evaluate", "--checkpoint", str(checkpoint), "--iwae-k", str(args.iwae_k),
                 "--iwae-examples", args.iwae_examples, "--out", str(evaluation)]) != 0:
        return 1
    report = json.loads(evaluation.read_text())
    protocol = report["nll_protocol"]
    print(f"\ncheckpoint {checkpoint}" + (f"  (trained in {train_s / 60:.1f} min wall)" if train_s is not None else ""))
    print(f"test NLL {report['iwae_nll']:.2f} +- {report['iwae_nll_se']:.2f} nats (standard error over images): "
          f"K={protocol['k']}, {protocol['images']} of {protocol['of_test_images']} test images, binarized once "
          f"(seed {protocol['binarization_seed']}); {report['iwae_seconds']:.0f} s; "
          f"active units {report['active_units']}/{len(report['activity_per_dim'])}")
    print("published (Norouzi et al. 2020, Table 1, dynamically binarized Fashion-MNIST, K=5000, all 10,000 images):")
    for name, nll in PUBLISHED:
        print(f"  {name:<38} {nll:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
