"""The README's screenshot of the page at `/`, taken from a running service in Debian's headless chromium.

    make run   # in another shell, or any `vaeserve serve`
    .venv/bin/python docs/screenshot.py --url http://127.0.0.1:8000 --out docs/screenshot.png
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument("--max-kb", type=int, default=300, help="above this, reduce to a 256-colour palette")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.goto(args.url + "/")
        page.wait_for_selector("body[data-loaded=true]", timeout=60_000)
        page.wait_for_timeout(4500)  # two /metrics scrapes, so the live table shows rates
        png = page.screenshot(full_page=True)
        browser.close()
    image = Image.open(io.BytesIO(png))
    image.save(args.out, optimize=True)
    if args.out.stat().st_size > args.max_kb * 1024:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
