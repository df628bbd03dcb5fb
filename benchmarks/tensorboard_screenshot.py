"""Screenshots of TensorBoard showing a tracked run: docs/figures/tensorboard-scalars.png and
docs/figures/tensorboard-images.png.

Records the 12-bit tanh network with ``Tracker(loggers=LOGDIR)`` (the run of ``tensorboard_figure.py``), starts
TensorBoard on 127.0.0.1, and takes each picture with headless Chromium (Debian's ``chromium``). Needs the
``[tensorboard]`` extra and /usr/bin/chromium.

Usage: python benchmarks/tensorboard_screenshot.py [--epochs 200] [--logdir runs/tensorboard-screenshot]
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

CHROMIUM = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1500,1000", "--virtual-time-budget=20000"]
VIEWS = {"tensorboard-scalars.png": "#timeseries", "tensorboard-images.png": "#images"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, proc: subprocess.Popen, limit_s: float = 120) -> None:
    # A script, not a test: waiting for a server to come up is what it has to do.
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"tensorboard did not answer at {url} within {limit_s:.0f} s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--logdir", default=str(REPO / "runs" / "tensorboard-screenshot"))
    p.add_argument("--out", default=str(REPO / "docs" / "figures"))
    args = p.parse_args(argv)

    import tensorboard_figure

    shutil.rmtree(args.logdir, ignore_errors=True)
    tensorboard_figure.record(args.logdir, args.epochs)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir, "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(url, tb)
        for name, view in VIEWS.items():
            with tempfile.TemporaryDirectory() as profile:
                target = Path(args.out) / name
                subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", f"--screenshot={target}",
                                f"{url}?darkMode=false{view}"], check=True, capture_output=True, timeout=300)
                print(f"wrote {target}")
    finally:
        tb.terminate()
        tb.wait(timeout=60)


if __name__ == "__main__":
    main()
