"""`vaeserve train`, `evaluate` and `export`: the training side of the command (vaeserve/cli.py
dispatches). Their arguments are defined here; torch is imported only when one of them runs.
`torchrun ... -m vaeserve train ...` starts the same command in every process."""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any

from training.recipes import RECIPES, apply_recipe

DEFAULT_RUN_DIR = Path("runs/default")
DEFAULT_ARTIFACTS = Path("artifacts")


class _Given(argparse.Action):
    """Store the value and remember that the option was given, so a --recipe leaves it alone."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = frozenset({*getattr(namespace, "given", ()), self.dest})


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="fashion-mnist",
                       help="'fashion-mnist' (Debian's dataset-fashion-mnist), a folder of images (PNG, JPEG, WebP, "
                            "BMP; flat, class folders, or the MVTec AD layout: docs/training.md), a table with a "
                            "header row (.csv or .parquet: numeric and categorical columns, empty cells allowed; "
                            "docs/tables.md), or a header-less .npy/.csv numeric matrix")
    group.add_argument("--data-dir", default=None,
                       help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    group.add_argument("--test-data", default=None,
                       help="tables and matrices: a held-out test file in the same form (default: the validation split)")
    group.add_argument("--categorical", nargs="*", default=[], metavar="COLUMN",
                       help="tables: read these columns as categories even if their values are numbers")
    group.add_argument("--ignore", nargs="*", default=[], metavar="COLUMN",
                       help="tables: drop these columns (ids, timestamps); requests may still carry them")
    group.add_argument("--normal-classes", nargs="*", default=[],
                       help="the classes to train on (one-class anomaly models): Fashion-MNIST's 0-9, or an image "
                            "folder's class folder names; the others are held out as labelled anomalies. Default all")
    group.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help="image folders: the size every image is resized to (default: the most common size)")
    group.add_argument("--channels", type=int, choices=[1, 3], default=None,
                       help="image folders: 1 (grey) or 3 (RGB); default 3 if any image is in colour")
    group.add_argument("--val-fraction", type=float, default=1 / 12, action=_Given,
                       help="share of training data held out for validation")


def add_commands(sub: Any) -> None:
    """train, evaluate and export, on the dispatcher's subparsers."""
    train = sub.add_parser("train", help="train a VAE and save checkpoints, metrics and pictures",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_data_options(train)
    arch = train.add_argument_group("model")
    arch.add_argument("--latent-dim", type=int, default=20, action=_Given, help="latent dimensions D")
    arch.add_argument("--hidden", type=int, nargs="+", default=[512, 512], action=_Given,
                      help="dense hidden layer widths (encoder; decoder mirrors); with --architecture conv, the "
                           "dense layers after the conv stack")
    arch.add_argument("--architecture", choices=["mlp", "conv"], default="mlp",
                      help="mlp: dense layers on flattened pixels; conv (images only): two 4x4 stride-2 "
                           "convolutions (32, 64 channels) before the dense layers, mirrored by transposed "
                           "convolutions in the decoder. Graphs still take flattened (B, F) inputs")
    arch.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default=None,
                      help="p(x|z): bernoulli (default for images) or gaussian (default for feature files; "
                           "for images it scores anomalies far better than bernoulli on grayscale pixels)")
    arch.add_argument("--gaussian-variance", choices=["learned", "fixed"], default="learned",
                      help="Gaussian likelihood (feature data): learned per-feature variance or fixed at 1")
    arch.add_argument("--prior", choices=["standard", "vampprior"], default="standard", action=_Given,
                      help="p(z): standard N(0, I), or a VampPrior (Tomczak & Welling 2018): the mixture of the "
                           "posteriors of --pseudo-inputs learned pseudo-inputs, initialized from training images")
    arch.add_argument("--pseudo-inputs", type=int, default=500, action=_Given, help="VampPrior: number of pseudo-inputs N")
    opt = train.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=30, action=_Given, help="passes over the training set")
    opt.add_argument("--batch-size", type=int, default=128, action=_Given,
                     help="examples per optimizer step (global, across processes)")
    opt.add_argument("--lr", type=float, default=1e-3, action=_Given, help="Adam learning rate")
    opt.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant", action=_Given,
                     help="constant, or cosine decay from --lr to ~0 over the run")
    opt.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                     help="elbo: the negative ELBO, one draw per example; iwae: the importance-weighted bound "
                          "with --train-k draws (Burda et al. 2015)")
    opt.add_argument("--train-k", type=int, default=None, help="draws per example for --objective iwae (default 5)")
    opt.add_argument("--seed", type=int, default=0, help="seed for initialization, shuffling, binarization and noise")
    opt.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    opt.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                     help="bf16 autocast for the networks, fp32, or auto: bf16 only where the device runs it "
                          "natively (CUDA bf16; CPU amx_bf16/avx512_bf16 flags) and a probe of the training step "
                          "(under ~1.5 s) measures it faster; fp32 otherwise. The choice and why are logged and saved")
    opt.add_argument("--beta", type=float, default=1.0, help="KL weight (beta-VAE, Higgins et al. 2017)")
    opt.add_argument("--kl-warmup-steps", type=int, default=0, action=_Given,
                     help="linear KL annealing from 0 to beta over N steps")
    opt.add_argument("--patience-epochs", type=int, default=0, action=_Given,
                     help="early stopping: stop once the validation -ELBO has not improved for more than N epochs, "
                          "counted only after the KL warm-up (0: run every epoch)")
    opt.add_argument("--ema-decay", type=float, default=0.999,
                     help="decay of the exponential moving average of the weights that validation, checkpoints "
                          "and export use (0: the raw weights)")
    opt.add_argument("--free-bits", type=float, default=0.0, help="per-dimension KL floor in nats (Kingma et al. 2016)")
    opt.add_argument("--no-binarize", dest="binarize", action="store_false",
                     help="train on grayscale pixels instead of dynamically binarized ones")
    opt.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps (0: no limit)")
    train.add_argument("--out", type=Path, default=DEFAULT_RUN_DIR, help="run folder for checkpoints, metrics, pictures")
    train.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                       help="a named recipe; published: the protocol of the published Fashion-MNIST NLLs (50k/10k "
                            "split, 784-300-300-40, VampPrior 500, Adam 5e-4, batch 100, 100-epoch KL warm-up, "
                            "patience 50 epochs; training/recipes.py). Options given on the command line win")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last.pt (weights, optimizer, schedule, weight "
                            "average, random states, early stopping), with the same options; it ends as an "
                            "uninterrupted run would")
    train.set_defaults(given=frozenset())
    train.set_defaults(handler=_train)

    evaluate = sub.add_parser("evaluate", help="test -ELBO, importance-weighted NLL, active units, AUROC",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("--checkpoint", type=Path, default=DEFAULT_RUN_DIR / "best.pt", help="checkpoint to evaluate")
    evaluate.add_argument("--iwae-k", type=int, default=5000, help="importance samples K for the NLL estimate")
    evaluate.add_argument("--iwae-examples", type=_examples, default=0, metavar="N|all",
                          help="the first N test images for the IWAE NLL, or all (0 or 'all': the published "
                               "protocol, ~11-15 min at K=5000 for the default model on 2 cores)")
    evaluate.add_argument("--out", type=Path, default=None, help="where to write evaluation.json (default: beside the checkpoint)")
    evaluate.add_argument("--device", default="auto",
                          help="auto (CUDA when present: the NLL's draws of 16 images per pass), cpu, cuda or cuda:N")
    evaluate.set_defaults(handler=_evaluate)

    export = sub.add_parser("export", help="export ONNX + TorchScript graphs, parity-check, write manifest.json",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export.add_argument("--checkpoint", type=Path, default=DEFAULT_RUN_DIR / "best.pt", help="checkpoint to export")
    export.add_argument("--out", type=Path, default=None,
                        help=f"artifacts folder the service loads (default {DEFAULT_ARTIFACTS}; not with --repository)")
    export.add_argument("--repository", type=Path, default=None,
                        help="model repository: write a new version to <repository>/<name>/<version>/")
    export.add_argument("--name", default=None, help="model name reported by the service (default: the dataset's "
                        "name + '-vae', e.g. fashion-mnist-vae)")
    export.add_argument("--version", default=None,
                        help="model version (default: the next integer in a repository, else a UTC timestamp)")
    export.add_argument("--quantize", choices=["int8"], default=None,
                        help="also write int8 graphs beside the float ones (ONNX Runtime static quantization "
                             "calibrated on the validation split; VAESERVE_PRECISION=int8 serves them); refused, "
                             "leaving the output as it was, when their p99 |score - float score| on held-out "
                             "data is above --max-quantized-p99-nats")
    export.add_argument("--max-quantized-p99-nats", type=float, default=0.5,
                        help="with --quantize: the largest p99 |int8 - float| of the -ELBO and IWAE scores accepted")
    _add_own_model_options(export)
    export.set_defaults(handler=_export)


def _add_own_model_options(export: argparse.ArgumentParser) -> None:
    """A VAE of your own instead of --checkpoint (docs/own-model.md; training/own_model.py)."""
    own = export.add_argument_group("a model of your own (instead of --checkpoint; docs/own-model.md)")
    own.add_argument("--module", default=None, metavar="PKG.MOD:FACTORY",
                     help="a callable returning your nn.Module (a class works), importable from here or PYTHONPATH")
    own.add_argument("--weights", type=Path, default=None, help="its state_dict (torch.save(model.state_dict(), ...))")
    own.add_argument("--input-shape", type=int, nargs="+", default=[1, 28, 28], help="one item: C H W, or F")
    own.add_argument("--decoder-output", choices=["logits", "probs", "mean", "mean_log_var"], default=None,
                     help="(required with --module) what decode(z) returns: Bernoulli logits or probabilities (a "
                          "Sigmoid at the end), a Gaussian mean (with --gaussian-log-var), a Gaussian mean and log-variance")
    own.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default=None,
                     help="p(x|z); unset: the one --decoder-output parameterizes")
    own.add_argument("--gaussian-log-var", type=float, default=None, help="--decoder-output mean: the fixed log-variance")
    own.add_argument("--input-layout", choices=["auto", "flat", "shaped"], default="auto",
                     help="what encode takes: items flattened (B, F), shaped (B, C, H, W), or auto (tried in that order)")
    own.add_argument("--calibration", default=None, metavar="ITEMS.npy|fashion-mnist",
                     help="held-out normal items for thresholds and p-values (fashion-mnist: its validation split)")
    own.add_argument("--reference", default=None, metavar="ITEMS.npy|fashion-mnist",
                     help="normal training items for the latent score's mean and covariance; unset: the --calibration items")


def _examples(value: str) -> int:
    """--iwae-examples: a count, or 'all' (0)."""
    if value == "all":
        return 0
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be 'all' or a count >= 0, got {value}")
    return count


def known_errors() -> tuple[type[Exception], ...]:
    """Failures `vaeserve` reports as one line (exit 2) instead of a traceback."""
    try:
        from training.data import DatasetError
        from training.export import ParityError
        from training.quantize import QuantizationRefused
    except ImportError:  # serve-only install without torch
        return ()
    return DatasetError, ParityError, QuantizationRefused


def _data_spec(args: argparse.Namespace) -> Any:
    from training.data import DataSpec

    if args.data == "fashion-mnist":
        try:
            classes = tuple(int(c) for c in args.normal_classes)
        except ValueError:
            raise ValueError(f"--normal-classes: Fashion-MNIST classes are 0-9, got {args.normal_classes}") from None
        return DataSpec(kind="fashion-mnist", path=args.data_dir, classes=classes, val_fraction=args.val_fraction)
    if Path(args.data).is_dir():
        return DataSpec(kind="images", path=args.data, class_names=tuple(args.normal_classes),
                        image_size=tuple(args.image_size) if args.image_size else None, channels=args.channels,
                        val_fraction=args.val_fraction)
    from model.table_files import is_table_file

    if is_table_file(Path(args.data)):
        return DataSpec(kind="table", path=args.data, test_path=args.test_data, val_fraction=args.val_fraction,
                        categorical=tuple(args.categorical), ignore=tuple(args.ignore))
    if args.categorical or args.ignore:
        raise ValueError(f"--categorical and --ignore need a table with a header row (CSV or Parquet); {args.data} "
                         "is read as a plain numeric matrix")
    return DataSpec(kind="features", path=args.data, test_path=args.test_data, val_fraction=args.val_fraction)


def _train(args: argparse.Namespace) -> int:
    from model.config import VAEConfig
    from model.table_schema import TableSchema
    from training.config import TrainConfig
    from training.data import load_dataset
    from training.loop import train
    from training.plots import save_curves, save_pictures

    applied = apply_recipe(args.recipe, vars(args), given=set(args.given))
    if applied:
        logging.getLogger("vaeserve").info("recipe %s: %s", args.recipe,
                                           ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in applied.items()))
    data = load_dataset(_data_spec(args))
    image = data.spec is not None and data.spec.kind == "fashion-mnist"
    table: Any = data.info.get("table")
    if table and args.likelihood not in (None, "table"):
        raise ValueError(f"--likelihood {args.likelihood}: a table is modelled per column (likelihood 'table')")
    model_config = VAEConfig(input_shape=data.input_shape, hidden_sizes=tuple(args.hidden), latent_dim=args.latent_dim,
                             likelihood="table" if table else args.likelihood or ("bernoulli" if image else "gaussian"),
                             table_blocks=TableSchema.from_dict(table).blocks() if table else (),
                             gaussian_variance=args.gaussian_variance, architecture=args.architecture,
                             prior=args.prior, pseudo_inputs=args.pseudo_inputs)
    train_config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
        beta=args.beta, kl_warmup_steps=args.kl_warmup_steps, free_bits=args.free_bits, ema_decay=args.ema_decay,
        binarize=args.binarize and image and model_config.likelihood == "bernoulli", precision=args.precision,
        max_steps=args.max_steps, lr_schedule=args.lr_schedule, objective=args.objective,
        patience_epochs=args.patience_epochs,
        train_k=args.train_k if args.train_k is not None else (5 if args.objective == "iwae" else 1),
    )
    result = train(model_config, train_config, data, args.out, resume=args.resume)
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    from training.checkpoint import load_checkpoint

    best, _ = load_checkpoint(result.best_path)
    save_curves(result.history, args.out / "curves.png")
    if image:
        save_pictures(best, data.test_x, args.out, kl_per_dim=result.history[-1]["kl_per_dim"])
    logging.getLogger("vaeserve").info("best checkpoint %s; pictures and metrics.jsonl in %s", result.best_path, args.out)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.data import DataSpec, load_dataset
    from training.evaluate import auroc, binarize_fixed, evaluate_model, score_examples
    from training.loop import resolve_device
    from training.nll import BINARIZATION_SEED
    from training.precision import precision_record

    device = str(resolve_device(args.device))
    model, payload = load_checkpoint(args.checkpoint, device=device)
    spec = DataSpec.from_dict(payload["data_spec"])
    data = load_dataset(spec)
    test_x = data.test_x if data.mean is None else ((data.test_x - data.mean) / data.std).astype("float32")
    binarized = bool(payload["train_config"].get("binarize")) and model.config.likelihood == "bernoulli"
    if binarized:
        test_x = binarize_fixed(test_x, seed=BINARIZATION_SEED)  # binarized once: the published NLL protocol
    report = evaluate_model(model, test_x, iwae_k=args.iwae_k, iwae_examples=args.iwae_examples, binarized=binarized,
                            device=device)
    report["device"] = device
    report["test_binarized"] = bool(payload["train_config"].get("binarize"))
    report["training_precision"] = precision_record(payload)  # evaluation itself is float32 (training/nll.py)
    if (spec.classes or spec.kind == "images") and data.test_y is not None:
        scores = score_examples(model, data.test_x, k=16, device=device)
        # Fashion-MNIST: the test classes not trained on; an image folder: its labels (1 = anomaly).
        anomalous = (~__import__("numpy").isin(data.test_y, list(spec.classes)) if spec.kind == "fashion-mnist"
                     else data.test_y == 1)
        report["auroc"] = {name: auroc(scores[f"{name}_score"], anomalous) for name in ("elbo", "iwae")}
    out = args.out or args.checkpoint.parent / "evaluation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report[k] for k in ("test_neg_elbo", "iwae_nll", "iwae_nll_se", "iwae_k", "iwae_examples",
                                      "iwae_seconds", "active_units")}
    print(json.dumps({**summary, **({"auroc": report["auroc"]} if "auroc" in report else {})}, indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from model.repository import check_name, next_version, version_dir
    from training.checkpoint import load_checkpoint
    from training.data import DataSpec, load_dataset
    from training.export import export_model

    if args.module is not None:
        from training.own_cli import export_from_args

        if args.out is None and args.repository is None:
            args.out = DEFAULT_ARTIFACTS
        print(json.dumps(export_from_args(args), indent=2))
        return 0
    model, payload = load_checkpoint(args.checkpoint)
    data = load_dataset(DataSpec.from_dict(payload["data_spec"]))
    evaluation = args.checkpoint.parent / "evaluation.json"
    metrics = json.loads(evaluation.read_text()) if evaluation.is_file() else {}
    if args.name is None:  # the dataset's name, made a valid model name ("my photos" -> my-photos-vae)
        args.name = re.sub(r"[^A-Za-z0-9_-]+", "-", data.name).strip("-_")[:120] + "-vae"
    if args.repository is not None:
        if args.out is not None:
            raise SystemExit("export: give --out or --repository, not both")
        version = args.version or next_version(args.repository, check_name(args.name))
        out = version_dir(args.repository, args.name, version)
        if out.exists():
            raise SystemExit(f"export: {out} already exists; versions are immutable, pick another --version")
    else:
        version = args.version or datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
        out = args.out or DEFAULT_ARTIFACTS

    def export(folder: Path) -> dict[str, Any]:
        return export_model(model, payload, folder, train_x=data.train_x, val_x=data.val_x, name=args.name,
                            version=version, metrics=metrics)

    if args.quantize:
        from training.quantize import export_with_int8

        heldout = "validation (no test split)" if data.test_x is data.val_x else "test"
        manifest = export_with_int8(out, export, calibration_x=data.val_x, heldout_x=data.test_x, heldout_split=heldout,
                                    max_p99_nats=args.max_quantized_p99_nats)
    else:
        manifest = export(out)
    summary = {"artifacts": str(out), "model": manifest["model"], "parity": manifest["parity"]}
    if "quantization" in manifest:
        summary["int8_parity"] = manifest["quantization"]["int8"]["parity"]["scores"]
    print(json.dumps(summary, indent=2))
    return 0

