"""The cohort manifest: a CSV with a ``slide`` column and optional ``slide_mpp`` (the slide's um/px override; ``mpp``
is accepted as its older name) and ``id`` columns."""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from histoscale.errors import ConfigError

__all__ = ["CohortJob", "jobs_from", "read_manifest"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class CohortJob:
    """One slide of the cohort: its unique ``id``, absolute ``slide`` path, optional um/px override ``mpp``,
    and where it came from (``line`` of the manifest, 0 when given in code)."""

    id: str
    slide: str
    mpp: float | None = None
    line: int = 0


def _parse_mpp(value: Any, where: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: mpp {value!r} is not a number; give um/px (e.g. 0.25) or leave it empty") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise ConfigError(f"{where}: mpp {value!r} must be a positive number of um/px, or empty")
    return mpp


def _default_id(slide: str) -> str:
    name = Path(slide).name
    stem = Path(name).stem
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).lstrip("._-")
    return stem or "slide"


def _make_jobs(entries: Sequence[tuple[str, Any, str | None, int]], source: str) -> list[CohortJob]:
    """(slide, mpp, id or None, line) -> jobs with unique ids; explicit ids must be unique and file-name safe."""
    explicit: dict[str, int] = {}
    for _, _, given, line in entries:
        if given is None:
            continue
        where = f"{source} line {line}" if line else source
        if not _SAFE_ID.match(given) or given in (".", ".."):
            raise ConfigError(
                f"{where}: id {given!r} cannot name a report folder; use letters, digits and . _ + - only"
            )
        if given in explicit:
            raise ConfigError(
                f"{where}: id {given!r} already used on line {explicit[given]}; ids must be unique (fix or remove "
                "the id column to use file names)"
            )
        explicit[given] = line
    taken = set(explicit)
    jobs = []
    for slide, mpp, given, line in entries:
        where = f"{source} line {line}" if line else f"{source} slide {slide}"
        job_id = given
        if job_id is None:
            base = _default_id(slide)
            job_id, n = base, 1
            while job_id in taken:
                n += 1
                job_id = f"{base}-{n}"
            taken.add(job_id)
        jobs.append(CohortJob(job_id, slide, _parse_mpp(mpp, where), line))
    return jobs


def read_manifest(path: str | os.PathLike[str]) -> list[CohortJob]:
    """Read a manifest CSV (columns ``slide``, optional ``mpp`` and ``id``) into jobs.

    Relative slide paths are resolved against the manifest's folder. Slide files are not opened here: a missing
    or unreadable slide becomes an ``ERROR`` row of the run, not a refusal of the whole manifest.

    Raises:
        ConfigError: the manifest is missing or unreadable, has no ``slide`` column, no rows, an empty slide
            cell, a bad ``mpp`` value or a duplicate ``id``; the message names the file, the line and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"manifest {p} does not exist: give a CSV file with a 'slide' column")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"manifest {p} cannot be read as UTF-8 CSV: {err}") from err
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"manifest {p} is empty: its first line must name the columns, e.g. 'slide,slide_mpp,id'")
    names = [h.strip().lower() for h in header]
    if "slide_mpp" in names:  # the override's name everywhere else; "mpp" is its older name here
        if "mpp" in names:
            raise ConfigError(f"manifest {p} has both 'slide_mpp' and 'mpp' columns (the same override): keep one")
        names[names.index("slide_mpp")] = "mpp"
    if "slide" not in names:
        raise ConfigError(
            f"manifest {p} has no 'slide' column (columns: {', '.join(h.strip() for h in header) or 'none'}); "
            "its first line must name the columns, e.g. 'slide,slide_mpp,id'"
        )
    for name in ("slide", "mpp", "id"):
        if names.count(name) > 1:
            raise ConfigError(f"manifest {p} has two '{name}' columns: keep one")
    col = {name: names.index(name) for name in ("slide", "mpp", "id") if name in names}
    entries = []
    for cells in reader:
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        cells = cells + [""] * (len(names) - len(cells))
        slide = cells[col["slide"]].strip()
        if not slide:
            raise ConfigError(f"manifest {p} line {line}: the slide cell is empty; give a slide path or delete the row")
        resolved = Path(os.path.expanduser(slide))
        if not resolved.is_absolute():
            resolved = p.parent.resolve() / resolved
        given = cells[col["id"]].strip() if "id" in col else ""
        entries.append((str(resolved), cells[col["mpp"]] if "mpp" in col else None, given or None, line))
    if not entries:
        raise ConfigError(f"manifest {p} lists no slides: add one row per slide under the header")
    return _make_jobs(entries, f"manifest {p}")


def jobs_from(manifest_or_rows: Any) -> list[CohortJob]:
    if isinstance(manifest_or_rows, (str, os.PathLike)):
        return read_manifest(manifest_or_rows)
    entries = []
    for i, item in enumerate(manifest_or_rows, start=1):
        if isinstance(item, CohortJob):
            entries.append((str(Path(item.slide).absolute()), item.mpp, item.id, item.line))
        elif isinstance(item, Mapping):
            if not item.get("slide"):
                raise ConfigError(f"cohort row {i} has no 'slide': give {{'slide': path, 'slide_mpp': ..., 'id': ...}}")
            if "slide_mpp" in item and "mpp" in item:
                raise ConfigError(f"cohort row {i} has both 'slide_mpp' and 'mpp' (the same override): keep one")
            given = item.get("id")
            mpp = item.get("slide_mpp", item.get("mpp"))
            entries.append((str(Path(item["slide"]).absolute()), mpp, str(given) if given else None, 0))
        elif isinstance(item, (str, os.PathLike)):
            entries.append((str(Path(item).absolute()), None, None, 0))
        else:
            raise ConfigError(f"cohort row {i} is a {type(item).__name__}: give a path, a mapping or a CohortJob")
    if not entries:
        raise ConfigError("the cohort lists no slides")
    return _make_jobs(entries, "cohort")


