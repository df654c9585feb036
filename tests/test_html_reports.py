"""The HTML pages, opened in a real headless Chromium: a cohort's index.html and each slide's report.html, and
the report of a classification.

One cohort of five phantoms (two with right metadata, one without, one whose metadata is 2x wrong, one corrupt
file) is run once for the module with few points; the browser is Debian's chromium driven by Playwright. Tests
that need the browser skip, with the reason, where either is missing (`.ci/run` installs chromium).
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from histoscale.classify import classify_slide
from histoscale.cohort import read_results, run_cohort
from histoscale.models import load_model
from histoscale.phantom import PhantomSpec, render_region, write_phantom
from histoscale.reports.classify import write_classify_report
from histoscale.reports.html import FLAG_ORDER, render_cohort_page
from histoscale.search import SearchConfig
from histoscale.slide import open_slide
from histoscale.slide.write import write_slide

# one cohort run for the module: under pytest-xdist (`make test`: --dist loadgroup) its tests share a worker
pytestmark = pytest.mark.xdist_group("html_reports")

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
EXPECTED_FLAGS = {"good": "OK", "good2": "OK", "bare": "MISSING-METADATA", "wrong": "MISMATCH", "corrupt": "ERROR"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort's output folder; the five phantoms are 2048 px at 0.5 um/px (bare: 0.4), searched with 16 points."""
    d = tmp_path_factory.mktemp("html_cohort")
    write_phantom(d / "good.svs", mpp=0.5, size_px_wh=(2048, 2048), seed=6, fmt="svs")
    write_phantom(d / "good2.tif", mpp=0.5, size_px_wh=(2048, 2048), seed=4, fmt="tiff")
    write_phantom(d / "bare.tif", mpp=0.4, size_px_wh=(2048, 2048), seed=5, fmt="bare")
    # tissue rendered at 0.5 um/px in a file that declares 1.0: wrong metadata in the file itself
    tissue = render_region(PhantomSpec(width_um=1024, height_um=1024, seed=7), 0, 0, (2048, 2048), 0.5)
    write_slide(d / "wrong.svs", tissue, mpp=1.0, fmt="svs")
    (d / "corrupt.svs").write_bytes((d / "good.svs").read_bytes()[:30_000])  # an incomplete copy
    (d / "manifest.csv").write_text("slide\n" + "".join(f"{n}\n" for n in
                                    ("good.svs", "good2.tif", "bare.tif", "wrong.svs", "corrupt.svs")))
    out = d / "out"
    summary = run_cohort(d / "manifest.csv", out_dir=out, workers=2, model_spec="phantom",
                         search=SearchConfig(points=16, seed=0))
    flags = {r["id"]: r["flag"] for r in summary.rows}
    assert flags == EXPECTED_FLAGS, [(r["id"], r["flag"], r["message"]) for r in summary.rows]
    return out


# ----------------------------------------------------------------------------------------------------------
# the page as text: no browser needed


def test_cohort_page_escapes_what_slides_and_errors_say() -> None:
    row = dict.fromkeys(("declared_mpp", "mpp_source", "implied_mpp", "ci_low", "ci_high", "chosen_scale",
                         "units", "disagreement_steps", "seconds"))
    row.update(id="<b>x</b>", slide="/data/<img src=y onerror=alert(1)>.svs", flag="ERROR",
               message="cannot open </td><script>alert(1)</script>")
    page = render_cohort_page([row], total=1, links={}, plot=None)
    assert "<script>alert(1)</script>" not in page and "<img src=y" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert page.count("<script>") == 1  # the page's own sorting code, nothing else


def test_index_is_written_with_the_table(cohort: Path) -> None:
    rows = read_results(cohort / "results.csv")
    page = (cohort / "index.html").read_text()
    for row in rows:
        assert f'data-id="{row["id"]}"' in page
    # Beside the implied um/px, its two readings: the model's alone and the nuclei's.
    assert "model um/px" in page and "ruler um/px" in page
    assert any(row["model_implied_mpp"] is not None for row in rows)
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert not list(cohort.glob(".*.tmp"))  # atomic writes leave no temporaries


# ----------------------------------------------------------------------------------------------------------
# in the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: install Debian's chromium (apt-get install chromium) to run the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install '.[test]'")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


class Page:
    """A browser tab that records console errors, uncaught exceptions and every URL it requests."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: Path) -> Any:
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")
        return self.page

    def check_clean(self) -> None:
        assert self.errors == []
        offline = [u for u in self.requests if not u.startswith(("file:", "data:"))]
        assert offline == [], "the page asked the network"

    def rows(self) -> list[dict[str, str]]:
        """The table's visible rows, top to bottom: id and flag."""
        return self.page.eval_on_selector_all(
            "#slides tbody tr:not([hidden])", "rows => rows.map(r => ({id: r.dataset.id, flag: r.dataset.flag}))"
        )


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    tab = Page(browser)
    yield tab
    tab.page.close()


def _not_blank(png: bytes) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float64)
    assert pixels.std() > 10 and (pixels < 250).mean() > 0.02, "the screenshot is (nearly) blank"


def test_index_shows_mismatch_and_error_first(tab: Page, cohort: Path) -> None:
    page = tab.open(cohort / "index.html")
    rows = tab.rows()
    assert [r["id"] for r in rows[:2]] == ["wrong", "corrupt"]
    assert [r["flag"] for r in rows[:2]] == ["MISMATCH", "ERROR"]
    assert [FLAG_ORDER.index(r["flag"]) for r in rows] == sorted(FLAG_ORDER.index(r["flag"]) for r in rows)
    assert page.text_content("#shown") == "5 of 5 shown"
    error = page.locator('tr[data-id="corrupt"] td.msg').inner_text()
    assert "corrupt.svs" in error  # the reason is on the page, not only in results.csv
    thumbs = page.eval_on_selector_all("#slides img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert thumbs and all(thumbs)  # four thumbnails (the ERROR row has none), all loaded
    assert page.eval_on_selector("#fig-summary img", "i => i.naturalWidth") > 0
    _not_blank(page.screenshot(full_page=True))
    tab.check_clean()


def _column(page: Any, header: str) -> list[str]:
    index = page.eval_on_selector_all("#slides thead th", f"ths => ths.findIndex(t => t.textContent.trim() === '{header}')")
    assert index >= 0, header
    return page.eval_on_selector_all(
        "#slides tbody tr:not([hidden])", f"rows => rows.map(r => r.cells[{index}].dataset.sort)"
    )


def test_index_sorts_by_any_column(tab: Page, cohort: Path) -> None:
    page = tab.open(cohort / "index.html")
    page.click("th >> text=declared um/px")
    declared = _column(page, "declared um/px")
    numbers = [float(v) for v in declared if v]
    assert numbers == sorted(numbers) and declared[len(numbers):] == [""] * (5 - len(numbers))  # empty cells last
    assert page.get_attribute("th:has-text('declared um/px')", "aria-sort") == "ascending"
    page.click("th >> text=declared um/px")
    declared = _column(page, "declared um/px")
    numbers = [float(v) for v in declared if v]
    assert numbers == sorted(numbers, reverse=True) and numbers[0] == 1.0 and declared[-1] == ""
    page.click("th >> text=slide")
    assert [r["id"] for r in tab.rows()] == sorted(EXPECTED_FLAGS)
    page.click("th >> text=steps")
    steps = [float(v) for v in _column(page, "steps") if v]
    assert steps == sorted(steps) and len(steps) == 3  # |disagreement| of the three slides that declare um/px
    tab.check_clean()


def test_index_filters_by_text_and_flag(tab: Page, cohort: Path) -> None:
    page = tab.open(cohort / "index.html")
    page.fill("#filter", "BARE")
    assert [r["id"] for r in tab.rows()] == ["bare"] and page.text_content("#shown") == "1 of 5 shown"
    page.fill("#filter", "truncated")  # words of the error message match too
    assert [r["id"] for r in tab.rows()] == ["corrupt"]
    page.fill("#filter", "")
    page.select_option("#flag-filter", "OK")
    assert sorted(r["id"] for r in tab.rows()) == ["good", "good2"]
    page.fill("#filter", "good2")
    assert [r["id"] for r in tab.rows()] == ["good2"]
    page.select_option("#flag-filter", "")
    page.fill("#filter", "")
    assert len(tab.rows()) == 5
    tab.check_clean()


def test_every_link_opens_its_report(tab: Page, cohort: Path) -> None:
    page = tab.open(cohort / "index.html")
    links = page.eval_on_selector_all("#slides tbody a", "as => as.map(a => [a.closest('tr').dataset.id, a.href])")
    assert sorted(i for i, _ in links) == sorted(i for i, f in EXPECTED_FLAGS.items() if f != "ERROR")
    for slide_id, href in links:
        page.click(f'tr[data-id="{slide_id}"] a')
        page.wait_for_load_state("load")
        assert page.url == href and href.endswith(f"slides/{slide_id}/report.html")
        assert page.text_content("#status") == EXPECTED_FLAGS[slide_id]
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.src.slice(0, 5), i.naturalWidth])")
        assert len(images) == 3 and all(src == "data:" and width > 0 for src, width in images)  # self-contained
        page.go_back()
        page.wait_for_load_state("load")
    tab.check_clean()


def test_search_report_states_the_mismatch(tab: Page, cohort: Path) -> None:
    import json

    doc = json.loads((cohort / "slides" / "wrong" / "result.json").read_text())
    check = doc["check"]
    page = tab.open(cohort / "slides" / "wrong" / "report.html")
    verdict = page.inner_text("#verdict")
    # After a MISMATCH the headline names what to read, not a value in the declared (wrong) units (issue 29).
    assert check["status"] == "MISMATCH"
    assert f"Apply at level-0 downsample {doc['estimate'] / check['declared_mpp']:.3g}" in verdict
    assert f"the slide is {check['implied_mpp']:.3g} um/px, not the declared {check['declared_mpp']:.3g}" in verdict
    assert re.search(rf"declared um/px\s+{check['declared_mpp']:.3g} \({re.escape(check['declared_source'])}\)", verdict)
    assert re.search(rf"implied um/px\s+{check['implied_mpp']:.3g} ", verdict)
    assert f"{check['disagreement_steps']:+.2f} grid steps" in verdict
    assert "check the scanner metadata" in verdict
    settings = page.inner_text("#settings + table")
    assert re.search(r"^points\s+16$", settings, re.M) and re.search(r"^seed\s+0$", settings, re.M)
    assert "histoscale" in page.inner_text("#versions + table")
    _not_blank(page.screenshot(full_page=True))
    tab.check_clean()


def test_classify_report_shows_the_class_map(tab: Page, cohort: Path, tmp_path: Path) -> None:
    slide_path = cohort.parent / "good.svs"
    with open_slide(slide_path) as slide:
        cmap = classify_slide(slide, load_model("phantom"), mpp=1.0, stride=128)
        written = write_classify_report(cmap, tmp_path, thumbnail=slide.thumbnail(512), arguments={"mpp": 1.0})
    page = tab.open(written["report.html"])
    assert page.eval_on_selector("#fig-classmap img", "i => i.src.startsWith('data:') && i.naturalWidth > 0")
    names = page.eval_on_selector_all("#areas tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
    assert names == list(cmap.class_names)
    assert "Applied at 1 um/px" in page.inner_text("#verdict")
    _not_blank(page.screenshot(full_page=True))
    tab.check_clean()
