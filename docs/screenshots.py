"""Screenshots of the HTML reports for the README, taken in headless Chromium at 1280 px wide.

    .venv/bin/python docs/screenshots.py [RUN_DIR] [--runs-index reports/index.html] [--out docs]

RUN_DIR defaults to reports/latest; the page of all runs defaults to the index.html next to the run folder
(`mlflow-template run` writes it). Writes runs.png, run.png, evaluate.png and monitor.png, palette-compressed.

Needs Debian's `chromium` and `chromium-driver` (/usr/bin/chromium, /usr/bin/chromedriver) and the dev extra's
`selenium`. Nothing is downloaded: the driver is given by path, so Selenium Manager is never asked for one.
`start_chromium` is also how tests/test_reports_browser.py opens the reports.
"""
from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
WIDTH = 1280
MAX_BYTES = 300_000  # each PNG stays small enough for a README
SHOTS = {  # file: (page relative to the run folder, or None for the page of all runs; window height in px)
    "runs.png": (None, 1000), "run.png": ("index.html", 900),
    "evaluate.png": ("06_evaluate.html", 900), "monitor.png": ("08_monitor.html", 900)}


def start_chromium(
    width: int = WIDTH,   # window width in px
    height: int = 900,    # window height in px
    console: bool = False,  # keep the browser console (driver.get_log("browser"), every level)
):
    "A headless Chromium under Selenium, from the system's chromium and chromedriver: nothing is downloaded"
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing: raise FileNotFoundError(f"headless screenshots need {' and '.join(missing)}: "
                                        "apt-get install -y chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: Selenium Manager, were it ever run, stays offline
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
              "--force-device-scale-factor=1", f"--window-size={width},{height}", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        opts.add_argument(a)
    if console: opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)  # a Service path: Selenium Manager is skipped


def small_png(
    png: bytes,  # a screenshot
    colors: int = 256,  # palette size
) -> bytes:
    "The screenshot as a palette PNG (reports are mostly flat colours: a fraction of the bytes, no visible change)"
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def take(
    run_dir: str | Path,                   # a run folder (reports/<run_id> or reports/latest)
    runs_index: str | Path | None = None,  # the page of all runs; default: index.html next to the run folder
    out: str | Path = Path(__file__).parent,  # where the PNGs go
) -> dict:
    "Screenshot the page of all runs and the run's own page, evaluate and monitor reports (their tops); {path: bytes}"
    run_dir = Path(run_dir).resolve()
    runs_index = Path(runs_index).resolve() if runs_index else run_dir.parent / "index.html"
    pages = {name: (runs_index if page is None else run_dir / page, h) for name, (page, h) in SHOTS.items()}
    missing = [str(p) for p, _ in pages.values() if not p.is_file()]
    if missing: raise FileNotFoundError(f"no such page: {', '.join(missing)} (the page of all runs is written by "
                                        "`mlflow-template run`, or by mlflow_template.runs.write_runs_index(reports))")
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    written, driver = {}, start_chromium()
    try:
        for name, (page, height) in pages.items():
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the viewport itself, not the window around it
                                   {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False})
            driver.get(page.as_uri())
            png = small_png(driver.get_screenshot_as_png())
            if len(png) > MAX_BYTES: raise ValueError(f"{name}: {len(png):,} bytes, over {MAX_BYTES:,}: lower its height in SHOTS")
            (out / name).write_bytes(png)
            written[out / name] = len(png)
    finally:
        driver.quit()
    return written


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", default="reports/latest", help="the run folder (default: reports/latest)")
    p.add_argument("--runs-index", default=None, help="the page of all runs (default: index.html next to the run folder)")
    p.add_argument("--out", default=str(Path(__file__).parent), help="folder for the PNGs (default: docs/)")
    a = p.parse_args()
    try: shots = take(a.run_dir, a.runs_index, a.out)
    except (FileNotFoundError, ValueError) as e: sys.exit(f"error: {e}")
    for path, size in shots.items(): print(f"{path}  {size:,} bytes")
