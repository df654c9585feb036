"""Regenerate the README's screenshots (docs/img/*.png) of the cohort page and of a search report.

Runs the cohort of the README on five phantom slides (two with right metadata, one without, one whose metadata
is 2x wrong, one incomplete copy) with the bundled reference model, then photographs ``index.html`` and the
MISMATCH slide's ``report.html`` in headless Chromium (Debian's ``chromium``, driven by Playwright).

    python scripts/screenshots.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from histoscale.cohort import run_cohort
from histoscale.phantom import PhantomSpec, render_region, write_phantom
from histoscale.search import SearchConfig
from histoscale.slide.write import write_slide

ROOT = Path(__file__).resolve().parent.parent
SIZE = (3072, 3072)


def write_cohort(folder: Path) -> Path:
    """Five slides and their manifest in ``folder``; returns the manifest's path."""
    write_phantom(folder / "S01-good.svs", mpp=0.5, size_px_wh=SIZE, seed=6, fmt="svs")
    write_phantom(folder / "S02-good.tif", mpp=0.5, size_px_wh=SIZE, seed=4, fmt="tiff")
    write_phantom(folder / "S03-no-metadata.tif", mpp=0.4, size_px_wh=SIZE, seed=5, fmt="bare")
    tissue = render_region(PhantomSpec(width_um=SIZE[0] * 0.5, height_um=SIZE[1] * 0.5, seed=7), 0, 0, SIZE, 0.5)
    write_slide(folder / "S04-wrong-mpp.svs", tissue, mpp=1.0, fmt="svs")  # declares 1.0 um/px, shows 0.5
    (folder / "S05-incomplete.svs").write_bytes((folder / "S01-good.svs").read_bytes()[:50_000])
    manifest = folder / "manifest.csv"
    names = ("S01-good.svs", "S02-good.tif", "S03-no-metadata.tif", "S04-wrong-mpp.svs", "S05-incomplete.svs")
    manifest.write_text("slide\n" + "".join(f"{name}\n" for name in names))
    return manifest


def photograph(page_path: Path, png: Path, *, chromium: str, height: int | None) -> None:
    """Screenshot of ``page_path`` at 1400 px wide: the whole page, or its top ``height`` px."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1400, "height": height or 900})
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(png), full_page=height is None)
        browser.close()
    print(f"wrote {png.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img", help="folder for the PNGs")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install chromium (and pip install playwright)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="histoscale-screenshots-") as tmp:
        slides = Path(tmp) / "slides"
        slides.mkdir()
        manifest = write_cohort(slides)
        out = Path(tmp) / "cohort"
        summary = run_cohort(manifest, out_dir=out, workers=2, search=SearchConfig(points=32, seed=0))
        print(summary.table())
        photograph(out / "index.html", args.out / "cohort-index.png", chromium=chromium, height=None)
        photograph(out / "slides" / "S04-wrong-mpp" / "report.html", args.out / "search-report.png",
                   chromium=chromium, height=1250)


if __name__ == "__main__":
    main()
