"""The labelled regions of the real-tissue benchmark (bench/real_models/regions) are valid histoscale labels.

They are read as a user's GeoJSON would be (``load_labels`` on the real slide): every polygon lies inside its
slide, carries a class, and train and test polygons never overlap (the held-out accuracy depends on it). Skipped
where the shared real data (../shared/data beside the repository, or $HISTOSCALE_DATA) is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import histoscale
from histoscale.labels import UNLABELLED

REPO = Path(__file__).resolve().parents[1]
REGIONS = REPO / "bench" / "real_models" / "regions"
DATA = Path(os.environ.get("HISTOSCALE_DATA", REPO.parent / "shared" / "data"))
CLASSES = ("ADI", "BACK", "EPI", "LYM", "STR")
EXPECTED = {  # slide -> classes each split labels
    "cmu-1-small-region.svs": {"BACK", "EPI", "STR"},
    "instanseg-he-example.tif": {"BACK", "EPI", "LYM"},
}


@pytest.mark.parametrize("slide_name", sorted(EXPECTED))
def test_regions_load_on_their_slide_and_splits_are_disjoint(slide_name: str) -> None:
    path = DATA / slide_name
    if not path.is_file():
        pytest.skip(f"real slide {path} absent (shared data not on this machine; set HISTOSCALE_DATA)")
    stem = slide_name.split(".")[0]
    with histoscale.open_slide(path) as slide:
        maps = {split: histoscale.load_labels(REGIONS / f"{stem}.{split}.geojson", slide=slide, class_names=CLASSES)
                for split in ("train", "test")}
    for split, label_map in maps.items():
        labelled = {CLASSES[c] for c, n in enumerate(label_map.counts()) if n > 0}
        assert labelled == EXPECTED[slide_name], split
    overlap = (maps["train"].labels != UNLABELLED) & (maps["test"].labels != UNLABELLED)
    assert not overlap.any()
    # every class has room for positions (at least 1000 label px, i.e. not a sliver)
    for label_map in maps.values():
        counts = label_map.counts()
        assert np.all(counts[counts > 0] >= 1000)
