"""Screenshot of the interactive report (docs/figures/report.png, shown in docs/plotting.md).

Writes ``infoplane.report`` of the given run directories to an HTML file, loads it in headless Chromium (Debian's
``chromium`` package, as the tests do) and saves the top of the page, the planes with the epoch slider and the
first row of curves, as a PNG::

    python benchmarks/report_screenshot.py runs/reproduce/tishby/tanh/fraction-0.05 \\
        runs/reproduce/tishby/tanh/fraction-0.85 --out docs/figures/report.png
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"


def screenshot(html_path, png_path, width=1100, height=1040):
    """Render ``html_path`` in headless Chromium and save the top ``width`` x ``height`` pixels as ``png_path``."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=20000",
               f"--window-size={width},{height}", f"--screenshot={os.path.abspath(png_path)}",
               f"file://{os.path.abspath(html_path)}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return png_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default=str(REPO / "docs" / "figures" / "report.png"))
    p.add_argument("--html", help="also keep the report here (default: a temporary file)")
    p.add_argument("--frames", type=int, default=None, help="slider positions (default: one per epoch)")
    args = p.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        sys.exit(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    import infoplane

    with tempfile.TemporaryDirectory() as tmp:
        html_path = args.html or os.path.join(tmp, "report.html")
        infoplane.report(args.runs, out=html_path, frames=args.frames)
        screenshot(html_path, args.out)
    print(args.out)


if __name__ == "__main__":
    main()
