"""Opening a slide: sniff the file, check it is whole, pick the backend that reads it, refuse damaged headers."""

from __future__ import annotations

import logging
import math
import os
import struct
from pathlib import Path
from typing import Union

from histoscale._compat import renamed
from histoscale.errors import ConfigError, SlideError
from histoscale.slide._backends import (
    Backend,
    ImageBackend,
    OpenSlideBackend,
    PlainImageBackend,
    TifffileBackend,
    TiffSlideBackend,
)
from histoscale.slide._conventions import Candidate, candidates_from_tifffile, from_reader_mpp, from_vendor_keys
from histoscale.slide._plain_image import open_plain_image
from histoscale.slide._slide import Slide
from histoscale.slide._tiff_layout import TiffLayout, inspect_tiff
from histoscale.slide._tiles import CutTiles
from histoscale.slide.resolution import Resolution, as_positive, resolve

__all__ = ["open_slide"]

logger = logging.getLogger(__name__)

_MAX_LEVEL_SIDE = 2**24  # px (16.7 M: 4 m at 0.25 um/px); larger level sides come from a damaged header
_MAX_TILE_SIDE = 8192  # px; larger TIFF tiles are taken for a damaged directory (scanners write 240..1024)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_MAGIC = b"DICM"  # at byte 128, after the preamble of a DICOM Part 10 file
_DICOM_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_DICOM_HEAD_BYTES = 64 * 1024  # the UIDs sit in the header, well before the pixel data

PathLike = Union[str, "os.PathLike[str]"]


def _sniff(path: Path) -> tuple[str, bytes]:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] in _TIFF_MAGIC:
        return "tiff", head
    if head.startswith(_PNG_MAGIC):
        return "png", head
    if head.startswith(_JPEG_MAGIC):
        return "jpeg", head
    return "other", head


def _check_tiff_complete(path: Path) -> None:
    """Fail early and clearly on damaged or truncated TIFFs (readers otherwise fail tile by tile later)."""
    import tifffile

    size = path.stat().st_size
    first_ifd = _first_ifd_offset(path)
    if first_ifd is None or not 8 <= first_ifd < size:
        where = "no first image directory" if first_ifd is None else f"its first image directory at byte {first_ifd}"
        raise SlideError(
            f"{path} is a damaged TIFF file: its header points to {where}, but the file has {size} bytes and no "
            "image there (a writer that stopped mid-write, or an incomplete copy); write or copy it again"
        )
    problems: list[str] = []

    def capture(record: logging.LogRecord) -> bool:
        # tifffile only logs (does not raise) when an IFD offset points past the end of the file
        if record.levelno >= logging.WARNING:
            problems.append(record.getMessage())
            return False
        return True

    tlog = logging.getLogger("tifffile")
    tlog.addFilter(capture)
    # the filter only sees records the logger lets through: make sure a quiet application logging config
    # (root level ERROR) does not switch this check off
    old_level = tlog.level
    if tlog.getEffectiveLevel() > logging.WARNING:
        tlog.setLevel(logging.WARNING)
    try:
        with tifffile.TiffFile(path) as tf:
            npages = 0
            page = tf.pages.first
            for npages, page in enumerate(tf.pages, start=1):
                if npages > 256:  # enough to cover any pyramid; skip long image stacks
                    break
                offsets = getattr(page, "dataoffsets", ())
                counts = getattr(page, "databytecounts", ())
                ends = [o + c for o, c in zip(offsets, counts) if c]
                tile_wh = (int(getattr(page, "tilewidth", 0) or 0), int(getattr(page, "tilelength", 0) or 0))
                if page.is_tiled and not all(0 < t <= _MAX_TILE_SIDE for t in tile_wh):
                    # OpenSlide allocates whole tiles and aborts the process (glib) when that fails
                    raise SlideError(
                        f"{path} is a damaged TIFF file: page {npages - 1} declares {tile_wh[0]}x{tile_wh[1]} px "
                        f"tiles (whole-slide tiles are at most {_MAX_TILE_SIDE} px); re-export or re-copy the file"
                    )
                chunks = math.prod(getattr(page, "chunked", ()) or (0,))
                if page.shape and math.prod(page.shape) and len(offsets) < chunks:
                    # a damaged directory (tags with invalid types are dropped by tifffile with a log record)
                    raise SlideError(
                        f"{path} is a damaged TIFF file: page {npages - 1} ({page.shape}) needs {chunks} strips or "
                        f"tiles but its directory lists {len(offsets)} data offsets; re-export or re-copy the file"
                    )
                if ends and max(ends) > size:
                    raise SlideError(
                        f"{path} is truncated: page {npages - 1} needs data up to byte {max(ends)} but the "
                        f"file has only {size} bytes (incomplete copy or download?)"
                    )
            del page
    except SlideError:
        raise
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error, ...
        raise SlideError(
            f"{path} is a damaged TIFF file: its image directories cannot be read ({type(err).__name__}: {err}; a "
            "writer that stopped mid-write, or a damaged copy); re-export or re-copy the file"
        ) from err
    finally:
        tlog.removeFilter(capture)
        tlog.setLevel(old_level)
    if any("offset" in m for m in problems):
        raise SlideError(
            f"{path} is truncated or damaged: its directory chain points past the end of the file "
            f"({size} bytes; tifffile: {problems[0]})"
        )
    for m in problems:
        logger.debug("tifffile on %s: %s", path, m)


def _file_of_dicom_folder(folder: Path) -> Path:
    """The file to open for a folder holding one DICOM whole-slide series: OpenSlide (4 and later) opens the series
    from any of its files (the first by name). A folder holding no such series, or several, is refused naming
    what to pass."""
    heads = {f: _dicom_head(f) for f in sorted(folder.iterdir()) if f.is_file()}
    files = [f for f, head in heads.items() if head]
    if not files:
        raise SlideError(f"slide {folder} is a directory, not a slide file (and holds no DICOM whole-slide series)")
    series: dict[str, list[Path]] = {}
    for f in files:
        if _dicom_uid(heads[f], 0x0002, 0x0002) == _DICOM_WSI:
            series.setdefault(_dicom_uid(heads[f], 0x0020, 0x000E) or "?", []).append(f)
    if len(series) != 1:
        what = "no whole-slide image (VL Whole Slide Microscopy)" if not series else f"{len(series)} whole-slide series"
        example = next(iter(series.values()))[0] if series else files[0]
        count = f"{len(files)} DICOM file{'s' if len(files) > 1 else ''}"
        raise SlideError(
            f"slide {folder} is a folder of {count} holding {what}: pass one .dcm file of the series "
            f"to search (e.g. {example}); OpenSlide opens the whole series from it"
        )
    chosen = next(iter(series.values()))[0]
    logger.info("%s holds a DICOM whole-slide series: opened from %s", folder, chosen.name)
    return chosen


def _dicom_head(path: Path) -> bytes:
    """The first bytes of a DICOM Part 10 file (b"" for any other file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_DICOM_HEAD_BYTES)
    except OSError:
        return b""
    return head if head[128:132] == _DICOM_MAGIC else b""


def _dicom_uid(head: bytes, group: int, element: int) -> str | None:
    """The UID element (``group``, ``element``) of a DICOM header, little endian, explicit (VR "UI") or implicit
    VR; None when it is not in ``head``."""
    tag = struct.pack("<HH", group, element)
    at = head.find(tag, 132)
    if at < 0:
        return None
    if head[at + 4 : at + 6] == b"UI":
        start, length = at + 8, struct.unpack_from("<H", head, at + 6)[0]
    else:
        start, length = at + 8, struct.unpack_from("<I", head, at + 4)[0]
    return head[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")


def _first_ifd_offset(path: Path) -> int | None:
    """The byte offset of the first IFD given by a TIFF or BigTIFF header; None when the header is cut short."""
    with open(path, "rb") as f:
        head = f.read(16)
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] in (b"*\x00", b"\x00*"):
        return struct.unpack(order + "I", head[4:8])[0] if len(head) >= 8 else None
    return struct.unpack(order + "Q", head[8:16])[0] if len(head) >= 16 else None


def open_slide(
    path: PathLike,
    slide_mpp: float | None = None,
    *,
    backend: str | None = None,
    mpp: float | None = None,
    plane: int | None = None,
    region: int | None = None,
) -> Slide:
    """Open a whole-slide image or a plain image as a :class:`Slide`.

    Args:
        path: slide file (.svs, .tif, .ndpi, .mrxs, ... or .png/.jpg), or a folder holding one DICOM whole-slide
            series (opened through one of its files, OpenSlide 4 reading the whole series).
        slide_mpp: level-0 resolution in um/px overriding whatever the file declares
            (``resolution.source == "override"``); ``mpp`` is its deprecated name.
        backend: force ``"openslide"``, ``"tiffslide"``, ``"tifffile"`` or ``"image"``. Default: chosen by
            content. TIFFs are inspected first (:func:`histoscale.slide._tiff_layout.inspect_tiff`): the slide is the
            largest tiled series, never a label/macro/thumbnail page; OpenSlide reads it when it sees the same
            levels (vendor formats, plain tiled pyramids), tiffslide when it does not (OME-TIFF, SubIFD
            pyramids), tifffile on the right series when the slide is not the file's first series (a label
            page first). JPEG/PNG open as one level, decoded at the first read (no Pillow pixel limit).
            Other files: OpenSlide (MRXS, VMS, DICOM, ...).
        plane: for a TIFF holding a stack of images (Z focal planes, time points), the one to read, counted from
            0 over the stack's axes in file order. Default: the first, with a warning naming the stack.
        region: for a Leica SCN, the scanned region to read alone (tifffile), counted from 0 over its main images
            in the file's order (``slide.regions`` lists them). Default: every region as OpenSlide places them
            on the glass; when no reader shows them as one image (regions of different resolutions), the largest
            in pixels, with a warning naming the regions. 0 is the only region of any other TIFF.

    Raises:
        SlideError: the file is missing, a folder that holds no single DICOM whole-slide series, empty, not a slide, damaged or truncated, or not a
            brightfield RGB image (fluorescence or multiplex channels, one grey channel); the message names the
            file and the problem, the backend error is chained.
        ConfigError: ``plane`` is given for a file without a stack, or is out of its range; ``region`` is given for
            a file that is not a TIFF, or is out of its range (the message lists the regions).
    """
    p = Path(os.fspath(path))
    if backend not in (None, "openslide", "tiffslide", "tifffile", "image"):
        raise ConfigError(f"backend must be 'openslide', 'tiffslide', 'tifffile' or 'image', got {backend!r}")
    mpp = renamed("open_slide", "mpp", "slide_mpp", mpp, slide_mpp)
    if mpp is not None and as_positive(mpp) is None:
        raise ConfigError(f"slide_mpp (the slide's um/px) must be a positive number, got {mpp!r}")
    if not p.exists():
        raise SlideError(f"slide {p} does not exist")
    if p.is_dir():
        p = _file_of_dicom_folder(p)
    try:
        size = p.stat().st_size
        kind, head = _sniff(p)
    except OSError as err:
        raise SlideError(f"slide {p} cannot be read: {err.strerror or err}") from err
    if size == 0:
        raise SlideError(f"slide {p} is empty (0 bytes)")
    layout: TiffLayout | None = None
    if kind == "tiff":
        _check_tiff_complete(p)
        layout = inspect_tiff(p, region=region)
        if region is not None and layout.regions and backend not in (None, "tifffile"):
            raise ConfigError(f"region={region!r} of {p} is read alone through tifffile; backend={backend!r} shows "
                              "every region at once: leave backend out", keyword="region")
        plane = _check_pixels(p, layout, plane)
    elif plane is not None:
        raise ConfigError(f"plane={plane!r} given for {p}, which is not a TIFF holding a stack of images")
    elif region is not None:
        raise ConfigError(f"region={region!r} given for {p}, which is not a TIFF (regions are those of a Leica SCN)",
                          keyword="region")

    impl = _pick_backend(p, kind, head, backend, layout, plane or 0)
    opened = _opened_region(p, layout, impl.name, region)
    _check_geometry(p, impl)
    tiff_candidates, cut = _tiff_metadata(p, layout, impl.level_dimensions) if layout is not None else ([], None)
    resolution, every = resolve(p, _candidates(impl, layout, opened) + tiff_candidates)
    if mpp is not None:
        resolution = Resolution(float(mpp), float(mpp), "override", None, every)
    if impl.name == "openslide":
        associated = _openslide_associated(impl)
    else:
        associated = tuple(layout.associated) if layout is not None else ()
    regions = layout.regions if layout is not None else ()
    return Slide(p, impl, resolution, candidates=every, associated=associated, regions=regions, region=opened,
                 cut_tiles=cut)


def _tiff_metadata(
    path: Path, layout: TiffLayout, level_dimensions: tuple[tuple[int, int], ...],
) -> tuple[list[Candidate], CutTiles | None]:
    """From one parse of the TIFF: the resolution candidates of the slide's series (OME-XML, ImageJ calibration,
    resolution tags), and the check for tiles cut short (every reader decodes them as grey, silently)."""
    import tifffile

    candidates: list[Candidate] = []
    cut = None
    try:
        with tifffile.TiffFile(path) as tf:
            try:
                candidates = candidates_from_tifffile(tf, layout.series_index)
            except Exception as err:  # noqa: BLE001 - the metadata is optional; the pixels were readable
                logger.debug("reading TIFF metadata of %s failed: %s", path, err)
            try:
                cut = CutTiles.find(path, tf.series[layout.series_index], level_dimensions)
            except Exception as err:  # noqa: BLE001 - the check is an extra: the slide is read without it
                logger.debug("cut-tile check off for %s: %s: %s", path, type(err).__name__, err)
    except Exception as err:  # noqa: BLE001 - the reader chosen opened the file; these extras are optional
        logger.debug("reading TIFF metadata of %s failed: %s", path, err)
    return candidates, cut


def _opened_region(path: Path, layout: TiffLayout | None, reader: str, region: int | None) -> int | None:
    """The one region of a Leica SCN the reader shows (None: no regions, or every region at once); a warning
    naming the regions left unread when the user did not pick one."""
    if layout is None or not layout.regions or reader != "tifffile":
        return None  # OpenSlide and tiffslide show every region on the glass's coordinates
    regions = layout.regions
    # tifffile reads one series: one region, the others are not read
    opened = next((r.index for r in regions if r.series_index == layout.series_index), None)
    if len(regions) > 1 and region is None and opened is not None:
        why = f"no reader shows them as one image: {layout.regions_apart}" if layout.regions_apart else (
            f"backend={reader!r} reads one")
        logger.warning(
            "%s holds %d scanned regions (%s): reading %s; not read: %s. Pick one with open_slide(..., region=k), "
            "k in 0..%d (command line: --region k)", path, len(regions), why, regions[opened].describe(),
            "; ".join(r.describe() for r in regions if r.index != opened), len(regions) - 1,
        )
    return opened


def _check_pixels(path: Path, layout: TiffLayout, plane: int | None) -> int | None:
    """Refuse a TIFF whose pixels are not brightfield RGB; for a stack of images, the plane to read (None: none).

    Every downstream step (tissue detection, the nuclei's ruler, the models) reads brightfield colour: a
    fluorescence image shown as RGB would be searched as if it were H&E and answered with confidence.
    """
    grey8 = layout.channels == 1 and layout.dtype == "uint8"
    if grey8:
        # a greyscale export of a brightfield scan stays readable (as grey RGB), but the models expect colour
        logger.warning("%s holds one grey channel, not RGB colour: read as grey; models trained on colour "
                       "(H&E) may not apply", path)
    elif not layout.brightfield_rgb:
        names = f" ({', '.join(layout.channel_names)})" if layout.channel_names else ""
        what = "one channel" if layout.channels == 1 else f"{layout.channels} channels{names}"
        raise SlideError(
            f"{path} is not a brightfield RGB image: it holds {what} of {layout.dtype} (axes {layout.axes}, "
            f"photometric {layout.photometric}), e.g. fluorescence or multiplex. histoscale reads brightfield "
            "RGB slides (H&E): export an RGB rendering of the brightfield scan (photometric RGB) to search it"
        )
    stack = layout.planes
    count = math.prod(stack.values())
    if plane is not None and not (isinstance(plane, int) and 0 <= plane < count):
        raise ConfigError(
            f"plane={plane!r} is out of range for {path}: it holds {count} plane(s)"
            + (f" ({_describe_stack(stack)}), numbered 0..{count - 1}" if stack else ""),
            keyword="plane",
        )
    if not stack:
        return None
    if plane is None:
        plane = 0
        logger.warning(
            "%s holds a stack of %d images (%s): reading the first; pick another with open_slide(..., plane=k), "
            "k in 0..%d (command line: --plane k)", path, count, _describe_stack(stack), count - 1,
        )
    return plane


def _describe_stack(stack: dict[str, int]) -> str:
    words = {"Z": "focal planes", "T": "time points", "Q": "pages", "I": "pages"}
    return ", ".join(f"{n} {words.get(a, f'along {a}')}" for a, n in stack.items())


def _order(kind: str, layout: TiffLayout | None) -> list[str]:
    """Readers to try, chosen by content: OpenSlide only where it sees the same levels as the layout
    (vendor formats, plain tiled pyramids); OME/SubIFD pyramids through tiffslide; a slide that is not
    series 0 (label page first), a stack of images (which tiffslide does not read) or one region of a Leica SCN
    read alone, through tifffile."""
    if kind in ("png", "jpeg"):
        return ["image"]
    if layout is None:
        return ["openslide", "image"]
    if layout.planes or layout.reader == "tifffile":
        return ["tifffile"]
    if layout.reader == "openslide":
        return ["openslide", "tiffslide", "tifffile", "image"]
    if layout.needs_series_override:
        return ["tifffile"]
    return ["tiffslide", "tifffile", "image"]


def _pick_backend(
    p: Path, kind: str, head: bytes, backend: str | None, layout: TiffLayout | None, plane: int
) -> Backend:
    order = [backend] if backend else _order(kind, layout)
    reasons: list[str] = []
    last_err: BaseException | None = None
    for name in order:
        try:
            if name == "openslide":
                import openslide

                fmt = openslide.OpenSlide.detect_format(str(p))
                if fmt is None:
                    reasons.append("OpenSlide does not recognise the format")
                    continue
                return OpenSlideBackend(p)
            if name in ("tiffslide", "tifffile"):
                if kind != "tiff":
                    reasons.append(f"{name} reads only TIFF files")
                    continue
                if name == "tifffile":
                    return TifffileBackend(p, layout.series_index if layout else 0, plane)
                return TiffSlideBackend(p)
            if kind == "other":
                reasons.append("not a PNG, JPEG or TIFF image")
                continue
            if kind == "tiff":
                return ImageBackend(p)
            return PlainImageBackend(open_plain_image(p))
        except SlideError as err:
            if name == "image" and kind != "tiff":
                raise  # one-line header/size message from the plain-image reader
            last_err = err
            reasons.append(f"{name}: {err}")
        except Exception as err:
            last_err = err
            reasons.append(f"{name}: {type(err).__name__}: {err}")
            logger.debug("backend %s failed on %s", name, p, exc_info=True)
    if kind == "other" and backend is None and last_err is None:
        what = f"not a slide or image file (it starts with {head[:8]!r})"
    else:
        what = "unreadable"
    raise SlideError(
        f"slide {p} is {what}: " + "; ".join(reasons) + ". Expected a whole-slide image OpenSlide or "
        "tiffslide reads (.svs, .tif, .ndpi, .mrxs, OME-TIFF, ...) or a PNG/JPEG/TIFF image"
    ) from last_err


def _candidates(impl: Backend, layout: TiffLayout | None, region: int | None) -> list[Candidate]:
    """The resolution candidates outside the TIFF's own metadata (:func:`_tiff_metadata`): reader properties
    (vendor keys, reader mpp), a Leica SCN's XML (the ``region`` read, or the regions' one resolution when they
    are read together); for JPEG/PNG the JFIF density / pHYs."""
    props = impl.properties
    cands: list[Candidate] = []
    for prefix in ("openslide", "tiffslide"):
        cands += from_reader_mpp(props, prefix)
    cands += from_vendor_keys(props)
    if layout is not None and layout.regions:
        shown = [r for r in layout.regions if region is None or r.index == region]
        if len({(round(r.mpp_x, 6), round(r.mpp_y, 6)) for r in shown}) == 1:  # one value for what is read
            which = f"region {region}" if region is not None else "its regions"
            cands.append(Candidate(shown[0].mpp_x, shown[0].mpp_y, f"Leica SCN XML ({which}: view nm / pixels)",
                                   "vendor"))
    if isinstance(impl, PlainImageBackend):
        cands += impl._img.candidates
    return cands


def _openslide_associated(impl: Backend) -> tuple[str, ...]:
    osr = getattr(impl, "_osr", None)
    return tuple(str(n) for n in osr.associated_images) if osr is not None else ()


def _check_geometry(path: Path, impl: Backend) -> None:
    """Refuse (closing the backend) level sizes or downsamples no real slide has: a damaged header would
    otherwise make reads loop or allocate without bound."""
    dims, downs = impl.level_dimensions, impl.level_downsamples
    ok = bool(dims) and len(dims) == len(downs)
    ok = ok and all(1 <= w <= _MAX_LEVEL_SIDE and 1 <= h <= _MAX_LEVEL_SIDE for w, h in dims)
    ok = ok and all(math.isfinite(d) and 0 < d <= _MAX_LEVEL_SIDE for d in downs)
    if not ok:
        impl.close()
        shown = ", ".join(f"{w}x{h}" if len(str(w)) + len(str(h)) < 24 else "(huge)" for w, h in dims[:4])
        raise SlideError(
            f"slide {path} declares impossible level sizes [{shown}] or downsamples (sides must be 1..{_MAX_LEVEL_SIDE} "
            "px): its header is damaged; re-export or re-copy the file"
        )

