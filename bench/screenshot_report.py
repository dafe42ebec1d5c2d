"""Open a report's index.html in headless Chromium (Debian's `chromium`) and save a screenshot.

Why: the report must render offline in a real browser, not only in vl-convert. Network features
are switched off, so a page that tried to load anything from outside would show empty charts.

    python bench/screenshot_report.py REPORT_DIR/index.html out.png [--height 4000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def _headless(index: Path, extra: list[str], timeout: float) -> str:
    """Run headless Chromium on `index` with network features off; its stdout."""
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not exe:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as prof:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={prof}",
            "--virtual-time-budget=15000", *extra, Path(index).resolve().as_uri(),
        ]
        return subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, text=True).stdout


def screenshot(index: Path, out_png: Path, width: int = 1400, height: int = 4000, timeout: float = 120) -> Path:
    _headless(index, ["--hide-scrollbars", f"--screenshot={Path(out_png).resolve()}", f"--window-size={width},{height}"], timeout)
    if not Path(out_png).exists():
        raise RuntimeError(f"chromium wrote no screenshot for {index}")
    return Path(out_png)


def dump_dom(index: Path, timeout: float = 120) -> str:
    """The page's DOM after its scripts ran (to count the charts vega-embed actually drew)."""
    return _headless(index, ["--dump-dom"], timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=4000)
    a = p.parse_args(argv)
    print(screenshot(Path(a.index), Path(a.out), a.width, a.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
