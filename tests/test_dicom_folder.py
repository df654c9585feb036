"""A DICOM whole-slide series given as its folder (issue 28, item 6): OpenSlide 4 opens the series from any of its
files, so the folder opens through one of them; a folder that holds no series, or several, is refused naming the
file to pass. The series are written here with pydicom (a test dependency): VL Whole Slide Microscopy instances,
TILED_FULL, uncompressed RGB frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _wsi_files import PURPLE, tissue_blocks
from histoscale.cli import main
from histoscale.errors import SlideError
from histoscale.slide import open_slide

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
CT = "1.2.840.10008.5.1.4.1.1.2"


def write_series(folder: Path, img: np.ndarray, *, mpp: float = 0.5, downsamples: tuple[int, ...] = (1, 4, 16),
                 tile: int = 256, sop_class: str = WSI, prefix: str = "level") -> list[Path]:
    """One instance per downsample of ``img`` (h, w, 3) uint8: TILED_FULL frames of ``tile`` px (white beyond the
    image), PixelSpacing ``mpp * downsample`` um (in mm, as DICOM gives it)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for i, downsample in enumerate(downsamples):
        level = img[::downsample, ::downsample]
        h, w = level.shape[:2]
        nx, ny = -(-w // tile), -(-h // tile)
        padded = np.full((ny * tile, nx * tile, 3), 255, np.uint8)
        padded[:h, :w] = level
        frames = padded.reshape(ny, tile, nx, tile, 3).transpose(0, 2, 1, 3, 4).reshape(-1, tile, tile, 3)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality, ds.PatientID, ds.PatientName, ds.Manufacturer = "SM", "P1", "Test", "histoscale-tests"
        ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240101", "000000", 1, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if i == 0 else ["DERIVED", "PRIMARY", "VOLUME",
                                                                                 "RESAMPLED"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.Rows, ds.Columns, ds.NumberOfFrames = tile, tile, len(frames)
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
        ds.DimensionOrganizationType = "TILED_FULL"
        spacing_mm = mpp * downsample / 1000
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = w * spacing_mm, h * spacing_mm, 0.001
        measures = Dataset()
        measures.PixelSpacing, measures.SliceThickness = [spacing_mm, spacing_mm], 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        optical_path = Dataset()
        optical_path.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = Sequence([optical_path])
        origin = Dataset()
        origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0
        ds.TotalPixelMatrixOriginSequence = Sequence([origin])
        ds.PixelData = frames.tobytes()
        path = folder / f"{prefix}{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = tissue_blocks(2048, 256, margin=1)
    img[256:512, 256:512] = PURPLE
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_series(folder, img)
    return folder


def test_one_dcm_file_opens_the_series(series: Path) -> None:
    with open_slide(series / "level1.dcm") as slide:
        assert slide.backend == "openslide" and slide.level_count == 3 and slide.mpp == pytest.approx(0.5)
        assert slide.level_downsamples == pytest.approx((1, 4, 16))


def test_the_folder_opens_as_the_series(series: Path) -> None:
    with open_slide(series) as slide:
        assert slide.path.parent == series and slide.path.suffix == ".dcm"
        assert slide.level_count == 3 and slide.dimensions == (2048, 2048) and slide.mpp == pytest.approx(0.5)
        assert tuple(slide.read_level(0, (300, 300), (1, 1))[0, 0]) == PURPLE


def test_search_on_the_folder(series: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["search", str(series), "--model", "phantom", "--no-ruler", "--points", "12", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "is a directory" not in err and '"points_used": 12' in out


def test_a_folder_of_two_series_says_to_pass_one_file(series: Path, tmp_path: Path) -> None:
    folder = tmp_path / "two"
    write_series(folder, tissue_blocks(1024, 256, margin=1), downsamples=(1, 4), prefix="a")
    write_series(folder, tissue_blocks(1024, 256, margin=1), downsamples=(1, 4), prefix="b")
    with pytest.raises(SlideError, match=r"two is a folder of 4 DICOM files holding 2 whole-slide series: pass one "
                       r"\.dcm file of the series to search \(e\.g\. .*a0\.dcm\)"):
        open_slide(folder)


def test_a_folder_of_dicom_that_is_no_slide_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "ct"
    write_series(folder, tissue_blocks(512, 256, margin=1), downsamples=(1,), sop_class=CT)
    with pytest.raises(SlideError, match=r"ct is a folder of 1 DICOM file holding no whole-slide image"):
        open_slide(folder)


def test_a_folder_without_dicom_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a slide")
    with pytest.raises(SlideError, match=r"is a directory, not a slide file \(and holds no DICOM whole-slide series\)"):
        open_slide(tmp_path)
