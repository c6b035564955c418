"""Image-folder ingest (training/images.py): files per second, and the peak memory of the process.

    .venv/bin/python benchmarks/image_ingest.py --files 60000 --size 28 --channels 1    # Fashion-MNIST's PNGs
    .venv/bin/python benchmarks/image_ingest.py --files 100000 --size 64 --channels 3   # 100k colour images

Writes the folder (real Fashion-MNIST images, tinted and resized for colour) into a temporary
directory, then times the first load (decode + cache write) and the second (from the cache), each in a
fresh process so its peak RSS (VmHWM) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOAD = """
import json, os, resource, sys, time
sys.path.insert(0, {repo!r})
os.environ["VAESERVE_CACHE_DIR"] = {cache!r}
from training.data import DataSpec, load_dataset
start = time.perf_counter()
data = load_dataset(DataSpec(kind="images", path={folder!r}))
seconds = time.perf_counter() - start
peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024
print(json.dumps({{"seconds": seconds, "items": len(data.train_x) + len(data.val_x), "peak_mib": peak,
                  "shape": list(data.input_shape)}}))
"""


def write_folder(root: Path, *, files: int, size: int, channels: int) -> None:
    import numpy as np
    from PIL import Image

    from training.data import load_fashion_mnist

    data = load_fashion_mnist(val_fraction=0.01)
    images = (np.concatenate([data.train_x, data.val_x, data.test_x]) * 255).astype(np.uint8).reshape(-1, 28, 28)
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(files):
        grey = images[i % len(images)]
        image = (Image.fromarray((grey[..., None] * rng.uniform(0.4, 1.0, 3)).astype(np.uint8), mode="RGB")
                 if channels == 3 else Image.fromarray(grey, mode="L"))
        if size != 28:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        image.save(root / f"{i:06d}.png")


def load(folder: Path, cache: Path) -> dict[str, float]:
    code = LOAD.format(repo=str(REPO), cache=str(cache), folder=str(folder))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=60000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        folder, cache = Path(work) / "images", Path(work) / "cache"
        start = time.perf_counter()
        write_folder(folder, files=args.files, size=args.size, channels=args.channels)
        print(f"wrote {args.files} PNGs of {args.size}x{args.size}x{args.channels} in {time.perf_counter() - start:.0f} s")
        for label in ("first load (decode + cache)", "second load (cache)"):
            result = load(folder, cache)
            print(f"{label}: {result['items']} images in {result['seconds']:.1f} s = "
                  f"{result['items'] / result['seconds']:,.0f} files/s; peak RSS {result['peak_mib']:,.0f} MiB; "
                  f"shape {result['shape']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
