"""The cohort runner: manifest parsing, local pool and Dask runs, flags per slide, worker death, kill and resume.

Slides are small phantoms (2048 px, known um/px); the model is the bundled reference (trained at 0.5 um/px).
One cohort run per executor is shared by the module (each costs process start-up and model loading).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from _faults import die_on_crashme
from histoscale.cohort import COLUMNS, read_manifest, read_results, run_cohort
from histoscale.errors import ConfigError
from histoscale.search import SearchConfig

TRUE_MPP = 0.5  # the SVS phantom, declared correctly in its metadata
BARE_MPP = 0.4  # the phantom without resolution metadata
SEARCH = SearchConfig(points=24, seed=0)
MODEL = "phantom"  # the bundled phantom model: these slides are phantoms
GRID_STEPS_PER_OCTAVE = 4


def _steps(a: float, b: float) -> float:
    import math

    return abs(math.log2(a / b)) * GRID_STEPS_PER_OCTAVE


@pytest.fixture(scope="module")
def cohort_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good.svs (0.5 um/px, declared), bare.tif (0.4 um/px, no metadata), corrupt.svs (text), crashme.svs (a link
    to good.svs, for the worker-death hook) and manifest.csv listing them plus a missing file and a 2x-wrong
    override of good.svs."""
    from histoscale.phantom import write_phantom

    d = tmp_path_factory.mktemp("cohort")
    write_phantom(d / "good.svs", mpp=TRUE_MPP, size_px_wh=(2048, 2048), seed=3, fmt="svs")
    write_phantom(d / "bare.tif", mpp=BARE_MPP, size_px_wh=(2048, 2048), seed=5, fmt="bare")
    (d / "corrupt.svs").write_text("this is not a slide\n")
    os.symlink(d / "good.svs", d / "crashme.svs")
    (d / "manifest.csv").write_text(
        "slide,mpp,id\n"
        "good.svs,,\n"
        "bare.tif,,\n"
        f"good.svs,{2 * TRUE_MPP},wrong\n"
        "corrupt.svs,,\n"
        "missing.svs,,\n"
        "crashme.svs,,\n"
    )
    return {"dir": d, "manifest": d / "manifest.csv", "good": d / "good.svs", "bare": d / "bare.tif"}


def _run_with_crash_hook(**kwargs: Any):
    return run_cohort(**kwargs, job_runner=die_on_crashme)


@pytest.fixture(scope="module")
def local_run(cohort_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("local") / "out"
    return _run_with_crash_hook(manifest_or_rows=cohort_files["manifest"], out_dir=out, workers=2,
                                model_spec=MODEL, search=SEARCH, retries=1)


def _by_id(rows) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def _check_flags(summary, *, deaths: int) -> None:
    rows = _by_id(summary.rows)
    assert list(rows) == ["good", "bare", "wrong", "corrupt", "missing", "crashme"]  # manifest order

    good = rows["good"]
    assert good["flag"] == "OK", good
    assert good["declared_mpp"] == pytest.approx(TRUE_MPP)
    assert good["mpp_source"].startswith("metadata:")
    assert _steps(good["implied_mpp"], TRUE_MPP) <= 1.0
    assert good["ci_low"] < good["ci_high"]  # around the continuous estimate; implied_mpp is the grid winner's
    assert good["units"] == "um/px" and good["points_used"] >= 1

    bare = rows["bare"]
    assert bare["flag"] == "MISSING-METADATA", bare
    assert bare["declared_mpp"] is None and bare["units"] == "downsample"
    assert _steps(bare["implied_mpp"], BARE_MPP) <= 1.5, bare

    wrong = rows["wrong"]  # declared 2x the truth through the manifest's mpp column
    assert wrong["flag"] == "MISMATCH", wrong
    assert wrong["mpp_source"] == "override" and wrong["declared_mpp"] == pytest.approx(2 * TRUE_MPP)
    assert wrong["disagreement_steps"] < -2.0
    assert _steps(wrong["implied_mpp"], TRUE_MPP) <= 1.5

    assert rows["corrupt"]["flag"] == "ERROR" and "corrupt.svs" in rows["corrupt"]["message"]
    assert rows["missing"]["flag"] == "ERROR" and "does not exist" in rows["missing"]["message"]
    crash = rows["crashme"]
    assert crash["flag"] == "ERROR" and "worker died while processing" in crash["message"]
    assert f"({deaths} time" in crash["message"]

    assert summary.counts == {"OK": 1, "MISSING-METADATA": 1, "MISMATCH": 1, "ERROR": 3}
    on_disk = read_results(summary.results_csv)
    assert [r["id"] for r in on_disk] == list(rows)
    assert [r["flag"] for r in on_disk] == [r["flag"] for r in summary.rows]
    with summary.results_csv.open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS


def test_local_pool_flags_each_slide(local_run) -> None:
    _check_flags(local_run, deaths=2)  # retries=1: the first try and one retry
    assert local_run.mode == "local" and local_run.processed == 6 and local_run.resumed == 0


def test_local_pool_writes_reports(local_run) -> None:
    slides = local_run.out_dir / "slides"
    for name in ("good", "bare", "wrong"):
        for file in ("result.json", "points.csv", "curves.png", "votes.png", "overview.png", "thumbnail.jpg",
                     "report.html"):
            assert (slides / name / file).is_file(), (name, file)
    assert not (slides / "corrupt").exists() and not (slides / "crashme" / "result.json").exists()
    assert (local_run.out_dir / "cohort.json").is_file() and (local_run.out_dir / "index.html").is_file()
    assert "calibration: the model card&#39;s, if it has one" in (local_run.out_dir / "index.html").read_text()
    assert "MISMATCH" in local_run.table()


def test_dask_local_cluster_gives_the_same_answers(cohort_files, local_run, tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install 'histoscale[dask]')")
    summary = _run_with_crash_hook(manifest_or_rows=cohort_files["manifest"], out_dir=tmp_path / "dask", workers=2,
                                   scheduler="local", model_spec=MODEL, search=SEARCH, retries=0, figures=False)
    assert summary.mode == "dask-local"
    _check_flags(summary, deaths=1)  # the dying worker: KilledWorker at once with retries=0
    local, dask = _by_id(local_run.rows), _by_id(summary.rows)
    for name in ("good", "bare", "wrong"):
        assert dask[name]["chosen_scale"] == pytest.approx(local[name]["chosen_scale"])
        assert dask[name]["implied_mpp"] == pytest.approx(local[name]["implied_mpp"], rel=0.02)
    assert (tmp_path / "dask" / "slides" / "good" / "result.json").is_file()
    assert not (tmp_path / "dask" / "slides" / "good" / "curves.png").exists()  # figures=False


def test_resume_keeps_final_rows_and_redoes_errors_only_when_asked(local_run, cohort_files, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(local_run.out_dir, out)
    with pytest.raises(ConfigError, match="--resume"):
        run_cohort(cohort_files["manifest"], out_dir=out, model_spec=MODEL, search=SEARCH)
    with pytest.raises(ConfigError, match="other options"):
        run_cohort(cohort_files["manifest"], out_dir=out, model_spec=MODEL, search=SEARCH.replace(points=50), resume=True)

    kept = run_cohort(cohort_files["manifest"], out_dir=out, model_spec=MODEL, search=SEARCH, resume=True)
    assert kept.processed == 0 and kept.resumed == 6
    assert [r["finished_at"] for r in kept.rows] == [r["finished_at"] for r in local_run.rows]

    # --retry-errors redoes the three ERROR rows only (no crash hook now: crashme is good.svs and succeeds)
    redone = run_cohort(cohort_files["manifest"], out_dir=out, model_spec=MODEL, search=SEARCH, resume=True, retry_errors=True,
                        workers=1, figures=False)
    assert redone.processed == 3 and redone.resumed == 3
    before, after = _by_id(local_run.rows), _by_id(redone.rows)
    for name in ("good", "bare", "wrong"):
        assert after[name]["finished_at"] == before[name]["finished_at"]
    assert after["crashme"]["flag"] == "OK"
    assert after["corrupt"]["flag"] == after["missing"]["flag"] == "ERROR"


def test_kill_then_resume_loses_nothing_and_redoes_nothing(cohort_files, tmp_path: Path) -> None:
    manifest = tmp_path / "kill.csv"
    good = cohort_files["good"]
    manifest.write_text("slide,id\n" + "".join(f"{good},k{i}\n" for i in range(3)))
    out = tmp_path / "out"
    args = ["cohort", "--model", "phantom", str(manifest), "--out", str(out), "--workers", "1", "--points", "24", "--no-figures"]
    args += ["--model", MODEL] if MODEL else []
    proc = subprocess.Popen([sys.executable, "-m", "histoscale.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = out / "results.csv"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(read_results(results)) >= 1:
                break
            time.sleep(0.1)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, err
    first = read_results(results)
    assert 1 <= len(first) < 3
    assert all(r["flag"] == "OK" for r in first)

    from histoscale.cli import main

    assert main([*args, "--resume"]) == 0
    final = read_results(results)
    assert [r["id"] for r in final] == ["k0", "k1", "k2"]
    assert all(r["flag"] == "OK" for r in final)
    by_id = _by_id(final)
    for row in first:  # finished before the kill: kept as they were, not redone
        assert by_id[row["id"]]["finished_at"] == row["finished_at"]
        assert by_id[row["id"]]["seconds"] == row["seconds"]


# ---------------------------------------------------------------------------------------------------------
# manifests and arguments (no workers started)
# ---------------------------------------------------------------------------------------------------------
def _manifest(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.csv"
    p.write_text(text)
    return p


def test_manifest_resolves_paths_and_makes_ids_unique(tmp_path: Path) -> None:
    sub = tmp_path / "slides"
    sub.mkdir()
    jobs = read_manifest(_manifest(tmp_path, "Slide , MPP\nslides/a.svs,0.25\n/x/a.svs,\nslides/b.ome.tiff,\n\n"))
    assert [j.id for j in jobs] == ["a", "a-2", "b"]
    assert jobs[0].slide == str(sub / "a.svs") and jobs[0].mpp == 0.25
    assert jobs[1].slide == "/x/a.svs" and jobs[1].mpp is None
    (job,) = read_manifest(_manifest(tmp_path, "slide,slide_mpp\nslides/a.svs,0.5\n"))  # the override's own name
    assert job.mpp == 0.5
    with pytest.raises(ConfigError, match="both 'slide_mpp' and 'mpp'"):
        read_manifest(_manifest(tmp_path, "slide,slide_mpp,mpp\nslides/a.svs,0.5,0.5\n"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path,mpp\na.svs,0.5\n", "no 'slide' column"),
        ("slide,id\na.svs,x\nb.svs,x\n", "line 3: id 'x' already used on line 2"),
        ("slide,mpp\na.svs,0.5\nb.svs,abc\n", "line 3: mpp 'abc' is not a number"),
        ("slide,mpp\na.svs,-1\n", "line 2: mpp '-1' must be a positive"),
        ("slide,mpp\na.svs,nan\n", "line 2: mpp 'nan' must be a positive"),
        ("slide,id\na.svs,../up\n", "cannot name a report folder"),
        ("slide\n\n", "lists no slides"),
        ("", "is empty"),
        ("slide,mpp\n,0.5\n", "line 2: the slide cell is empty"),
    ],
)
def test_bad_manifests_are_refused_with_the_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        read_manifest(_manifest(tmp_path, text))


def test_missing_manifest_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")
    m = _manifest(tmp_path, "slide\na.svs\n")
    with pytest.raises(ConfigError, match="unknown search settings"), pytest.warns(DeprecationWarning, match="search="):
        run_cohort(m, out_dir=tmp_path / "o", search_kwargs={"pointz": 3})
    with pytest.raises(ConfigError, match="points must be at least 1"):
        run_cohort(m, out_dir=tmp_path / "o", search=SearchConfig(points=0))
    with pytest.raises(ConfigError, match="retries"):
        run_cohort(m, out_dir=tmp_path / "o", retries=-1)
    from histoscale.errors import ModelError

    with pytest.raises(ModelError, match="does not exist"):
        run_cohort(m, out_dir=tmp_path / "o", model_spec=tmp_path / "no-model.json")


def test_cli_reports_a_bad_manifest_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from histoscale.cli import main

    m = _manifest(tmp_path, "path\na.svs\n")
    assert main(["cohort", "--model", "phantom", str(m), "--out", str(tmp_path / "o")]) == 2
    assert "no 'slide' column" in capsys.readouterr().err
    assert main(["cohort", "--model", "phantom", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
