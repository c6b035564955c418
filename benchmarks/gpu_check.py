"""The GPU path, measured in one run: training examples/s on the device against the CPU (the data
resident on the device), the NLL evaluation's time there (the published protocol's batched importance
sampling, K = 5000), and the TorchScript graphs the service serves, 1 and 256 items per call, on the
device against the CPU. Prints the figures (and writes them with --json).

    python benchmarks/gpu_check.py                  # a GPU machine: ~1-2 minutes, well under 8
    python benchmarks/gpu_check.py --tiny           # CI (tests/benchmarks/test_gpu_check.py): seconds on a CPU
    python benchmarks/gpu_check.py --json gpu.json

Without CUDA it measures the CPU alone. It needs only torch and numpy: it imports the model/ and
training/ modules that import nothing else (not training/export.py, which needs onnx and ONNX Runtime,
and not the service), traces the graphs as `vaeserve export` does and runs them as the service's
TorchScript backend does (service/core/runtime.py: numpy in, .to(device), out .cpu().numpy()), and
puts the repository on sys.path itself, so a checkout runs on a machine with torch alone. ONNX
Runtime on CUDA is not measured: the GPU machine at hand has only the CPU onnxruntime (the serve
image's `RUNTIME=gpu` target installs onnxruntime-gpu; Dockerfile). Without Fashion-MNIST
(/usr/share/datasets/fashion-mnist) it times random pixels: the figures are speeds, not quality.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # model/ and training/ from a bare checkout

from model.config import VAEConfig  # noqa: E402
from model.contract import DEFAULT_MC_SAMPLES  # noqa: E402
from model.graphs import build_graphs  # noqa: E402
from model.vae import VAE  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import Dataset, DatasetError, load_fashion_mnist  # noqa: E402
from training.evaluate import binarize_fixed  # noqa: E402
from training.loop import train  # noqa: E402
from training.nll import importance_weighted_nll  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    hidden: tuple[int, ...] = (300, 300)  # the published recipe's model (training/recipes.py)
    latent_dim: int = 40
    pseudo_inputs: int = 500
    batch_size: int = 100
    train_items: int = 20_000
    val_items: int = 2_000
    epochs: int = 3  # the last epoch's speed is reported: the first pays for warm-up
    nll_images: int = 10_000  # on CUDA: the whole protocol
    nll_images_cpu: int = 20  # the CPU's figure is extrapolated, and checks the device's NLLs
    nll_k: int = 5000
    serve_batches: tuple[int, ...] = (1, 256)
    serve_seconds: float = 2.0


TINY = Sizes(hidden=(32,), latent_dim=4, pseudo_inputs=8, batch_size=50, train_items=300, val_items=50, epochs=2,
             nll_images=4, nll_images_cpu=2, nll_k=50, serve_batches=(1, 8), serve_seconds=0.05)


def load_data(sizes: Sizes) -> Dataset:
    """Fashion-MNIST cut to the sizes, or random pixels of its shape where it is not installed."""
    try:
        data = load_fashion_mnist()
    except DatasetError:
        rng = np.random.default_rng(0)
        pixels = (rng.random((sizes.train_items + sizes.val_items + 10_000, 784), dtype=np.float32) ** 4)
        data = Dataset(name="random pixels", input_shape=(1, 28, 28), train_x=pixels[:sizes.train_items],
                       val_x=pixels[sizes.train_items:-10_000], test_x=pixels[-10_000:])
    data.train_x, data.val_x = data.train_x[:sizes.train_items], data.val_x[:sizes.val_items]
    return data


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_training(data: Dataset, sizes: Sizes, device: str) -> tuple[dict[str, Any], VAE]:
    """The real loop (training/loop.py) with --precision auto; the last epoch's examples/s."""
    config = VAEConfig(hidden_sizes=sizes.hidden, latent_dim=sizes.latent_dim, prior="vampprior",
                       pseudo_inputs=sizes.pseudo_inputs)
    train_config = TrainConfig(epochs=sizes.epochs, batch_size=sizes.batch_size, lr=5e-4, device=device,
                               precision="auto", kl_warmup_steps=1000)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(config, train_config, data, Path(out))
        wall_s = time.perf_counter() - started
        precision = torch.load(result.best_path, map_location="cpu", weights_only=True)["precision"]
    last = result.history[-1]
    return {"device": device, "examples_per_s": last["examples_per_s"], "epoch_s": last["seconds"],
            "epochs": len(result.history), "wall_s": round(wall_s, 2), "precision": precision["used"],
            "precision_reason": precision["reason"]}, result.model


def measure_nll(model: VAE, x: np.ndarray, device: str, *, k: int) -> tuple[dict[str, Any], np.ndarray]:
    """training/nll.py's importance sampling of every image in x on the device (one image warms up first)."""
    model = copy.deepcopy(model).to(device)
    importance_weighted_nll(model, x[:1], k=k)
    synchronize(device)
    started = time.perf_counter()
    nll = importance_weighted_nll(model, x, k=k)["nll"]
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"device": device, "images": len(x), "k": k, "seconds": round(seconds, 3),
            "seconds_per_10000_images": round(seconds / len(x) * 10_000, 1), "nll_mean": round(float(nll.mean()), 3)}, nll


def torchscript_graphs(model: VAE, x: np.ndarray) -> dict[str, tuple[bytes, Callable[[int], tuple[np.ndarray, ...]]]]:
    """The encoder and scorer_core graphs traced as `vaeserve export` traces them (TorchScript bytes), with
    a maker of numpy feeds per batch size (the scorer's noise: K = DEFAULT_MC_SAMPLES draws per item)."""
    graphs = build_graphs(copy.deepcopy(model).cpu().eval(), None, None)
    rng = np.random.default_rng(0)

    def feeds(graph: str) -> Callable[[int], tuple[np.ndarray, ...]]:
        def make(batch: int) -> tuple[np.ndarray, ...]:
            rows = x[rng.integers(len(x), size=batch)]
            if graph == "encoder":
                return (rows,)
            return rows, rng.standard_normal((batch, DEFAULT_MC_SAMPLES, model.config.latent_dim), dtype=np.float32)
        return make

    out = {}
    for name in ("encoder", "scorer_core"):
        args = tuple(torch.from_numpy(a) for a in feeds(name)(4))
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notices, silenced by `vaeserve export` too
            torch.jit.save(torch.jit.trace(graphs[name], args, check_trace=False), buffer)
        out[name] = (buffer.getvalue(), feeds(name))
    return out


def serve_call(module: torch.jit.ScriptModule, feeds: tuple[np.ndarray, ...], target: torch.device) -> None:
    """One call as the service's TorchScript backend makes it: numpy in, to the device, numpy out."""
    with torch.inference_mode():
        result = module(*(torch.from_numpy(f).to(target) for f in feeds))
    for r in result if isinstance(result, (tuple, list)) else (result,):
        r.cpu().numpy()


def measure_serving(graphs: dict[str, tuple[bytes, Callable[[int], tuple[np.ndarray, ...]]]], device: str,
                    sizes: Sizes) -> list[dict[str, Any]]:
    """Items/s of each graph at each batch size, after 5 warm-up calls (kernel selection, the profiling
    executor's first runs), over at least serve_seconds."""
    rows = []
    target = torch.device(device)
    for name, (data, make) in graphs.items():
        module = torch.jit.load(io.BytesIO(data), map_location=target).eval()
        for batch in sizes.serve_batches:
            feeds = make(batch)
            for _ in range(5):
                serve_call(module, feeds, target)
            calls, started = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - started < sizes.serve_seconds:
                serve_call(module, feeds, target)
                calls += 1
            seconds = time.perf_counter() - started
            rows.append({"device": device, "graph": name, "batch": batch, "items_per_s": round(calls * batch / seconds, 1),
                         "ms_per_call": round(seconds / calls * 1000, 3)})
    return rows


def cpu_model() -> str:
    """lscpu's model name ('Intel(R) Xeon(R) Processor'), from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"torch": torch.__version__, "cpu": cpu_model(),
                            "cpu_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = None
    return info


def run_checks(sizes: Sizes, device: str) -> dict[str, Any]:
    devices = [device] + (["cpu"] if device != "cpu" else [])
    data = load_data(sizes)
    report: dict[str, Any] = {"environment": environment(device), "data": data.name, "sizes": asdict(sizes),
                              "training": [], "nll": [], "serving": []}
    model = None
    for dev in devices:
        record, trained = measure_training(data, sizes, dev)
        report["training"].append(record)
        if model is None:  # the device's model is the one evaluated and served
            model = trained
    assert model is not None, "no device was measured"
    test_x = binarize_fixed(data.test_x, seed=0)
    on_device = sizes.nll_images if device != "cpu" else sizes.nll_images_cpu
    record, device_nll = measure_nll(model, test_x[:on_device], device, k=sizes.nll_k)
    report["nll"].append(record)
    if device != "cpu":  # the same images' NLLs on the CPU: the same noise, so the same figures
        record, cpu_nll = measure_nll(model, test_x[:sizes.nll_images_cpu], "cpu", k=sizes.nll_k)
        record["max_abs_diff_vs_device"] = float(np.abs(cpu_nll - device_nll[:len(cpu_nll)]).max())
        report["nll"].append(record)
    graphs = torchscript_graphs(model, data.val_x)
    for dev in devices:
        report["serving"].extend(measure_serving(graphs, dev, sizes))
    return report


def print_report(report: dict[str, Any]) -> None:
    env = report["environment"]
    print(f"torch {env['torch']} | device {env['device']} {env.get('gpu', '')} | CPU {env['cpu']}, "
          f"{env['cpu_threads']} threads | ONNX Runtime providers: {env['onnxruntime_providers']} | data: {report['data']}")
    for r in report["training"]:
        print(f"train {r['device']:>6}: {r['examples_per_s']:>10,.0f} examples/s (epoch {r['epochs']}, {r['epoch_s']} s; "
              f"{r['precision']}: {r['precision_reason']})")
    for r in report["nll"]:
        extra = f", max |NLL - device's| {r['max_abs_diff_vs_device']:.2e}" if "max_abs_diff_vs_device" in r else ""
        print(f"NLL   {r['device']:>6}: {r['images']} images at K={r['k']} in {r['seconds']} s -> "
              f"{r['seconds_per_10000_images']} s per 10,000 (mean {r['nll_mean']}{extra})")
    for r in report["serving"]:
        print(f"serve {r['device']:>6}: TorchScript {r['graph']:<11} batch {r['batch']:>3}: "
              f"{r['items_per_s']:>12,.1f} items/s ({r['ms_per_call']} ms per call)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few items: seconds, for CI")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vaeserve").setLevel(logging.ERROR)  # a short run's collapse warning is not news here
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    started = time.perf_counter()
    report = run_checks(TINY if args.tiny else Sizes(), device)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    print_report(report)
    print(f"gpu_check: {report['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
