"""The `vaeserve` command: one dispatcher for both sides, importing neither torch nor the web stack.

train, evaluate and export are defined in training/cli.py and import torch when they run; serve
and score are defined in service/cli.py and need only the serve extra. So the serve image (no
torch) runs `vaeserve serve` and `vaeserve score --url`, and the training image (no FastAPI) runs
`vaeserve train`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from service import cli as service_cli
from training import cli as training_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaeserve",
                                     description="Train, export, serve and score with variational autoencoders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, the libraries' included")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    training_cli.add_commands(sub)
    service_cli.add_commands(sub)
    return parser


def configure_logging(verbose: bool) -> None:
    """vaeserve's own loggers at INFO, libraries at their WARNING: the ONNX exporter's optimizer passes
    log every step at INFO, which is progress noise to a user, not news. -v shows everything."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vaeserve").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":  # serve configures its own (request ids, VAESERVE_LOG_LEVEL)
        configure_logging(args.verbose)
    try:
        return int(args.handler(args))
    except Exception as exc:  # noqa: BLE001 - one place turns known failures into a clear exit
        from model.manifest import ArtifactError

        known: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, ArtifactError,
                                              *training_cli.known_errors(), *service_cli.known_errors())
        if isinstance(exc, known):
            print(f"vaeserve {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
