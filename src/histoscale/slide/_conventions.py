"""Level-0 pixel size (micrometres per pixel, "mpp") from every convention slide and image files use.

Each ``from_*`` function reads ONE convention from values already extracted from a file and returns
zero or more :class:`Candidate` objects; none of them opens a file. A candidate is either *accepted*
(a usable physical pixel size) or *rejected* with a human-readable ``reason`` (kept so that
``slide_info`` can show users why a number in their file was not used). :func:`choose` applies the
precedence below and returns the winner plus every candidate, best first.

Conventions and their sources
-----------------------------

=================  ==========================================================  =====================
kind               where the number lives                                      unit
=================  ==========================================================  =====================
``vendor``         reader properties: ``openslide.mpp-x/y``, ``tiffslide.mpp-x/y`` um/px
                   (when derived from vendor metadata); raw vendor keys
                   ``aperio.MPP``, ``ventana.ScanRes``,
                   ``mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X/Y``,   um/px
                   ``philips.DICOM_PIXEL_SPACING`` (``"y" "x"``),                mm
                   ``dicom.*PixelSpacing[0]/[1]`` (OpenSlide 4 DICOM, row/col)   mm
``ome``            OME-XML ``Pixels@PhysicalSizeX/Y`` + ``PhysicalSizeX/YUnit``  any ``UnitsLength``
                   (OME schema 2016-06; unit attribute absent = micrometre)
``imagej``         ImageJ ``ImageDescription`` ``unit=``/``yunit=`` with         px per unit
                   TIFF XResolution/YResolution (ImageJ writes ResolutionUnit
                   NONE; the unit is only in the description)
``dicom``          DICOM PixelSpacing (0028,0030): row spacing \\ column         mm
                   spacing, i.e. "y \\ x" (PS3.3 C.7.6.2.1.1, C.8.12.4 for WSI)
``tiff``           TIFF 6.0 XResolution/YResolution + ResolutionUnit            px per inch / cm
                   (2 = inch, 3 = centimetre, 1 = NONE: no absolute unit);
                   also ``openslide.mpp-x`` of ``generic-tiff`` and
                   ``tiffslide.mpp-x`` of generic TIFFs (derived from the tags)
``jfif``           JPEG JFIF APP0 units (0 none, 1 dpi, 2 dots/cm) + density    px per inch / cm
``png``            PNG pHYs: pixels per unit, unit 1 = metre, 0 = unknown       px per metre
=================  ==========================================================  =====================

Precedence (:data:`PRECEDENCE`): vendor > ome > imagej > dicom > tiff > jfif > png. Rationale:
vendor keys and OME-XML/ImageJ calibrations are written on purpose by acquisition or scientific
software with an explicit unit; TIFF tags and JPEG/PNG densities are print/screen fields that image
editors fill with defaults (72, 96, 300 dpi), so they are believed only when nothing better exists
and only when plausible for a microscope.

Rejection rules (applied when a candidate is built):

* not a positive finite number, or a unit that is not a physical length (TIFF ResolutionUnit NONE,
  JFIF units 0, PNG pHYs unit 0, OME ``Pixel``/``ReferenceFrame``, ImageJ ``pixel``);
* outside :data:`PLAUSIBLE_MPP` (0.01 .. 100 um/px) for any convention;
* for density conventions (``tiff``, ``jfif``, ``png``, and ImageJ calibrations in inch/cm):
  equal (within 1 %) to an editor default in :data:`EDITOR_DEFAULT_DPI`, or coarser than
  :data:`MAX_PLAUSIBLE_DENSITY_MPP` (25 um/px = 1016 dpi) -- the behaviour of histoscale's
  ``MAX_PLAUSIBLE_TAG_MPP``.

x/y disagreement beyond :data:`ANISOTROPY_TOLERANCE` does not reject a candidate; it sets ``note``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from xml.etree import ElementTree

__all__ = [
    "ANISOTROPY_TOLERANCE",
    "Candidate",
    "EDITOR_DEFAULT_DPI",
    "MAX_PLAUSIBLE_DENSITY_MPP",
    "OME_LENGTH_UNITS_UM",
    "PLAUSIBLE_MPP",
    "PRECEDENCE",
    "candidates_from_tifffile",
    "choose",
    "from_dicom_pixel_spacing",
    "from_imagej",
    "from_jfif",
    "from_ome_xml",
    "from_png_phys",
    "from_properties",
    "from_reader_mpp",
    "from_tiff_properties",
    "from_tiff_tags",
    "from_vendor_keys",
]

logger = logging.getLogger(__name__)

#: mpp_x and mpp_y differing by more than this fraction of the smaller one is flagged (``note``).
ANISOTROPY_TOLERANCE = 0.10
#: Any candidate outside this closed range of um/px is rejected as implausible for a slide scan
#: (0.01 um/px is below the optical limit by 10x; 100 um/px is coarser than a slide overview camera).
PLAUSIBLE_MPP = (0.01, 100.0)
#: Density conventions (TIFF tags, JFIF, PNG pHYs) coarser than this are rejected: 1016 dpi and
#: below are print/screen densities, no microscope. Same value as histoscale's MAX_PLAUSIBLE_TAG_MPP.
MAX_PLAUSIBLE_DENSITY_MPP = 25.0
#: Densities (pixels per inch) that image editors and cameras write by default.
EDITOR_DEFAULT_DPI = (72.0, 96.0, 150.0, 300.0, 600.0)
#: Conventions best first; :func:`choose` picks the first accepted candidate in this order.
PRECEDENCE = ("vendor", "ome", "imagej", "dicom", "tiff", "jfif", "png")

_DENSITY_KINDS = frozenset({"tiff", "jfif", "png"})
_UM_PER_INCH = 25400.0
_UM_PER_CM = 10000.0
_UM_PER_MM = 1000.0

#: Micrometres per unit for every OME ``UnitsLength`` value (OME schema 2016-06), plus common
#: spellings seen in the wild ("um", "micron", Greek mu). ``Pixel`` and ``ReferenceFrame`` are
#: deliberately absent: they are not physical lengths. ``li`` (line) is 1/12 inch and ``pt`` 1/72 inch
#: as in the OME units model (ome-common ``length.h``).
OME_LENGTH_UNITS_UM: dict[str, float] = {
    "Ym": 1e30, "Zm": 1e27, "Em": 1e24, "Pm": 1e21, "Tm": 1e18, "Gm": 1e15, "Mm": 1e12,
    "km": 1e9, "hm": 1e8, "dam": 1e7, "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3,
    "\u00b5m": 1.0, "nm": 1e-3, "pm": 1e-6, "fm": 1e-9, "am": 1e-12, "zm": 1e-15, "ym": 1e-18,
    "\u00c5": 1e-4,
    "thou": 25.4, "li": _UM_PER_INCH / 12, "in": _UM_PER_INCH, "ft": 12 * _UM_PER_INCH,
    "yd": 36 * _UM_PER_INCH, "mi": 63360 * _UM_PER_INCH, "pt": _UM_PER_INCH / 72,
    "ua": 149_597_870_700e6, "ly": 9_460_730_472_580_800e6, "pc": 3.085_677_581_491_367e22,
}  # fmt: skip
_UNIT_ALIASES: dict[str, str] = {
    "\u03bcm": "\u00b5m",  # Greek small mu instead of the micro sign
    "um": "\u00b5m",
    "micron": "\u00b5m",
    "microns": "\u00b5m",
    "micrometer": "\u00b5m",
    "micrometre": "\u00b5m",
    "\\u00b5m": "\u00b5m",  # ImageJ escapes non-ASCII in its description
    "\u212b": "\u00c5",  # ANGSTROM SIGN instead of LATIN CAPITAL A WITH RING ABOVE
    "angstrom": "\u00c5",
    "inch": "in",
    "inches": "in",
    "nanometer": "nm",
    "nanometre": "nm",
    "millimeter": "mm",
    "millimetre": "mm",
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
}
_NOT_PHYSICAL = frozenset({"pixel", "pixels", "px", "referenceframe", "reference frame", ""})


# --------------------------------------------------------------------------------------------------
# the candidate


@dataclass(frozen=True)
class Candidate:
    """One reading of the level-0 pixel size.

    Attributes:
        mpp_x: pixel width in micrometres (um/px); None when the file gives no physical value.
        mpp_y: pixel height in micrometres (um/px); None when the file gives no physical value.
        source: where the number came from, for humans, e.g. ``"OME-XML PhysicalSizeX/Y (µm)"``.
        kind: convention family, one of :data:`PRECEDENCE` (drives :func:`choose`).
        accepted: False when the value must not be used; ``reason`` then says why.
        reason: why the candidate was rejected (None when accepted).
        note: a warning on an accepted candidate (anisotropic pixels, one axis missing).
    """

    mpp_x: float | None
    mpp_y: float | None
    source: str
    kind: str
    accepted: bool = True
    reason: str | None = None
    note: str | None = None

    @property
    def mpp(self) -> float | None:
        """Geometric mean of mpp_x and mpp_y in um/px (None without a physical value)."""
        if self.mpp_x is None or self.mpp_y is None:
            return None
        return math.sqrt(self.mpp_x * self.mpp_y)

    @property
    def is_anisotropic(self) -> bool:
        """True when x and y differ by more than :data:`ANISOTROPY_TOLERANCE` of the smaller."""
        if self.mpp_x is None or self.mpp_y is None:
            return False
        return abs(self.mpp_x - self.mpp_y) > ANISOTROPY_TOLERANCE * min(self.mpp_x, self.mpp_y)

    def __str__(self) -> str:
        value = "no value" if self.mpp is None else f"{self.mpp_x:.6g} x {self.mpp_y:.6g} um/px"
        status = "accepted" if self.accepted else f"rejected: {self.reason}"
        extra = f" ({self.note})" if self.note else ""
        return f"{self.source}: {value}, {status}{extra}"


def _positive(value: Any) -> float | None:
    """Positive finite float from a number, numeric string or (numerator, denominator) pair.

    A string may use a decimal comma (``"0,500000"``, as scanners set to a European locale write Aperio's MPP),
    read as OpenSlide reads it, so that every reader's path gives the same value.
    """
    if isinstance(value, (tuple, list)) and len(value) == 2:
        num, den = _positive(value[0]), _positive(value[1])
        return num / den if num is not None and den is not None else None
    if isinstance(value, str):
        value = value.strip().strip('"')
        if value.count(",") == 1 and "." not in value:
            value = value.replace(",", ".")
    try:
        f = float(value)
    except (TypeError, ValueError, AttributeError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _rejected(source: str, kind: str, reason: str, x: float | None = None, y: float | None = None) -> Candidate:
    return Candidate(x, y, source, kind, accepted=False, reason=reason)


def _make(
    source: str,
    kind: str,
    mpp_x: Any,
    mpp_y: Any,
    *,
    density: bool | None = None,
) -> Candidate | None:
    """Validated candidate from raw um/px values; None when both axes are absent.

    Args:
        density: apply the print/screen density rules (editor-default DPI, > 25 um/px). Defaults
            to True for the ``tiff``, ``jfif`` and ``png`` kinds.
    """
    raw_x, raw_y = mpp_x, mpp_y
    x, y = _positive(mpp_x), _positive(mpp_y)
    if x is None and y is None:
        if raw_x is None and raw_y is None:
            return None
        return _rejected(source, kind, f"not a positive number ({raw_x!r}, {raw_y!r})")
    note = None
    if x is None or y is None:
        note = f"only {'x' if y is None else 'y'} given; square pixels assumed"
        x, y = (x or y), (y or x)
    assert x is not None and y is not None
    mpp = math.sqrt(x * y)
    if density is None:
        density = kind in _DENSITY_KINDS
    if density:
        dpi = _UM_PER_INCH / mpp
        for default in EDITOR_DEFAULT_DPI:
            if abs(dpi - default) <= 0.01 * default:
                return _rejected(
                    source, kind, f"{default:g} dpi is an image-editor/screen default, not a microscope", x, y
                )
        if mpp > MAX_PLAUSIBLE_DENSITY_MPP:
            return _rejected(
                source,
                kind,
                f"{mpp:.4g} um/px ({dpi:.4g} dpi) is coarser than {MAX_PLAUSIBLE_DENSITY_MPP:g} um/px: "
                "a print/screen density, not a microscope",
                x,
                y,
            )
    lo, hi = PLAUSIBLE_MPP
    if not (lo <= x <= hi and lo <= y <= hi):
        return _rejected(source, kind, f"{x:.4g} x {y:.4g} um/px is outside the plausible {lo:g}..{hi:g} um/px", x, y)
    cand = Candidate(x, y, source, kind, note=note)
    if cand.is_anisotropic:
        aniso = f"anisotropic: x {x:.4g} vs y {y:.4g} um/px differ by more than {ANISOTROPY_TOLERANCE:.0%}"
        cand = replace(cand, note=f"{note}; {aniso}" if note else aniso)
    return cand


def _um_per_unit(unit: Any, *, default: str | None = None) -> tuple[float | None, str]:
    """(micrometres per unit, canonical unit name) for a length unit spelled any common way.

    Returns (None, name) for units that are not physical lengths or unknown.
    """
    if unit is None:
        if default is None:
            return None, ""
        unit = default
    name = str(unit).strip()
    name = _UNIT_ALIASES.get(name, _UNIT_ALIASES.get(name.lower(), name))
    if name in OME_LENGTH_UNITS_UM:
        return OME_LENGTH_UNITS_UM[name], name
    # case-insensitive only where unambiguous (e.g. "MM" is megametre in OME but nobody means it)
    lowered = {k.lower(): k for k in ("cm", "mm", "nm", "in", "km", "dm", "pm", "thou", "ft", "yd", "mi", "pt")}
    if name.lower() in lowered:
        key = lowered[name.lower()]
        return OME_LENGTH_UNITS_UM[key], key
    return None, name


# --------------------------------------------------------------------------------------------------
# reader properties (OpenSlide, tiffslide) and raw vendor keys


def _tag_mpp(props: Mapping[str, Any], prefix: str = "tiff") -> tuple[float | None, float | None, str | None]:
    """um/px implied by ``<prefix>.XResolution/YResolution/ResolutionUnit`` properties, and the unit."""
    unit = _resolution_unit(props.get(f"{prefix}.ResolutionUnit"))
    scale = {"inch": _UM_PER_INCH, "centimeter": _UM_PER_CM, "millimeter": _UM_PER_MM, "micrometer": 1.0}.get(
        unit or ""
    )
    if scale is None:
        return None, None, unit
    xr, yr = _positive(props.get(f"{prefix}.XResolution")), _positive(props.get(f"{prefix}.YResolution"))
    return (scale / xr if xr else None), (scale / yr if yr else None), unit


def from_reader_mpp(props: Mapping[str, Any], prefix: str) -> list[Candidate]:
    """``<prefix>.mpp-x`` / ``<prefix>.mpp-y`` (um/px) set by OpenSlide (``prefix="openslide"``) or
    tiffslide (``prefix="tiffslide"``).

    Both readers fill these keys from vendor metadata when there is some, and otherwise from the
    TIFF resolution tags (OpenSlide ``generic-tiff`` accepts inch and centimetre since 4.0; tiffslide
    also accepts tifffile's non-standard millimetre/micrometre units). Values derived from the tags
    are labelled ``kind="tiff"`` so they get the density checks: a generic TIFF at 72 dpi makes
    OpenSlide 4.0.1 report ``openslide.mpp-x = 352.777...``, which must not become a resolution.

    ``openslide.objective-power`` is not a resolution and is ignored.
    """
    key_x, key_y = f"{prefix}.mpp-x", f"{prefix}.mpp-y"
    if props.get(key_x) is None and props.get(key_y) is None:
        return []
    vendor = props.get(f"{prefix}.vendor")
    tag_x, tag_y, _ = _tag_mpp(props)
    x = _positive(props.get(key_x))
    from_tags = vendor in (None, "", "generic-tiff") and (tag_x is not None or tag_y is not None)
    if not from_tags and tag_x is not None and x is not None and not _has_vendor_key(props):
        # a vendor reader with no vendor mpp key that equals the tag value: the tags are the source
        from_tags = math.isclose(x, tag_x, rel_tol=1e-6)
    if from_tags:
        source = f"{key_x}/{key_y} (from TIFF XResolution/YResolution)"
        kind = "tiff"
    else:
        source = f"{key_x}/{key_y}" + (f" ({vendor})" if vendor else "")
        kind = "vendor"
    cand = _make(source, kind, props.get(key_x), props.get(key_y))
    return [cand] if cand else []


_MIRAX_X = "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X"
_MIRAX_Y = "mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_Y"
_DICOM_SPACING = re.compile(r"^dicom\.(?:.*\.)?PixelSpacing\[(0|1)\]$")


def _has_vendor_key(props: Mapping[str, Any]) -> bool:
    return any(k in props for k in ("aperio.MPP", "ventana.ScanRes", _MIRAX_X, "philips.DICOM_PIXEL_SPACING")) or any(
        _DICOM_SPACING.match(str(k)) for k in props
    )


def from_vendor_keys(props: Mapping[str, Any]) -> list[Candidate]:
    """Raw vendor metadata keys as exposed by OpenSlide (and partly tiffslide).

    * ``aperio.MPP`` -- um/px, square pixels (Aperio ImageDescription ``|MPP = 0.2520``);
    * ``ventana.ScanRes`` -- um/px, square (Ventana BIF ``iScan`` XMP attribute);
    * ``mirax.LAYER_0_LEVEL_0_SECTION.MICROMETER_PER_PIXEL_X/_Y`` -- um/px (MIRAX Slidedat.ini);
    * ``philips.DICOM_PIXEL_SPACING`` -- mm, ``"row" "column"`` i.e. y first, values quoted
      (Philips TIFF XML ``DICOM_PIXEL_SPACING``, first = level 0);
    * ``dicom.[...].PixelSpacing[0]/[1]`` -- mm, row (y) then column (x) (OpenSlide 4 DICOM);
    * ``hamamatsu.XResolution/YResolution/ResolutionUnit`` when present, like TIFF tags.

    Not resolutions, ignored: ``openslide.objective-power``, ``aperio.AppMag``,
    ``hamamatsu.SourceLens``, ``leica.objective``. Leica SCN and Hamamatsu NDPI carry no separate
    mpp key in OpenSlide; their ``openslide.mpp-x`` comes from the TIFF tags (cm), see
    :func:`from_reader_mpp`.
    """
    out: list[Candidate] = []

    def add(c: Candidate | None) -> None:
        if c is not None:
            out.append(c)

    if "aperio.MPP" in props:
        add(_make("aperio.MPP", "vendor", props["aperio.MPP"], props["aperio.MPP"]))
    if "ventana.ScanRes" in props:
        add(_make("ventana.ScanRes", "vendor", props["ventana.ScanRes"], props["ventana.ScanRes"]))
    if _MIRAX_X in props or _MIRAX_Y in props:
        add(_make("mirax MICROMETER_PER_PIXEL_X/Y", "vendor", props.get(_MIRAX_X), props.get(_MIRAX_Y)))
    if "philips.DICOM_PIXEL_SPACING" in props:
        parts = str(props["philips.DICOM_PIXEL_SPACING"]).replace('"', " ").split()
        y_mm = _positive(parts[0]) if parts else None
        x_mm = _positive(parts[1]) if len(parts) > 1 else None
        src = "philips.DICOM_PIXEL_SPACING (mm, y x)"
        if y_mm is None and x_mm is None:
            add(_rejected(src, "vendor", f"unparseable value {props['philips.DICOM_PIXEL_SPACING']!r}"))
        else:
            add(_make(src, "vendor", x_mm and x_mm * _UM_PER_MM, y_mm and y_mm * _UM_PER_MM))
    spacing = {m.group(1): (k, v) for k, v in props.items() if (m := _DICOM_SPACING.match(str(k)))}
    if spacing:
        y_mm = _positive(spacing.get("0", (None, None))[1])
        x_mm = _positive(spacing.get("1", (None, None))[1])
        add(
            _make("dicom PixelSpacing (mm, row\\col)", "vendor", x_mm and x_mm * _UM_PER_MM, y_mm and y_mm * _UM_PER_MM)
        )
    if "hamamatsu.ResolutionUnit" in props:
        out.extend(from_tiff_properties(props, prefix="hamamatsu", kind="vendor"))
    return out


def _resolution_unit(value: Any) -> str | None:
    """Canonical TIFF ResolutionUnit name: 'none', 'inch', 'centimeter', 'millimeter', 'micrometer'.

    Accepts ints (TIFF codes 1..3; 4/5 are tifffile's non-standard mm/um), tifffile ``RESUNIT``
    enums, and OpenSlide/tiffslide strings (``"centimeter"``, ``"CENTIMETER"``, ``"inch"``, ``"none"``).
    """
    if value is None:
        return None
    name = getattr(value, "name", None)
    if name is None:
        try:
            code = int(value)
        except (TypeError, ValueError):
            name = str(value)
        else:
            name = {1: "none", 2: "inch", 3: "centimeter", 4: "millimeter", 5: "micrometer"}.get(code, f"code {code}")
    return name.strip().lower()


def from_tiff_properties(props: Mapping[str, Any], prefix: str = "tiff", kind: str = "tiff") -> list[Candidate]:
    """``<prefix>.XResolution/YResolution/ResolutionUnit`` strings as OpenSlide/tiffslide expose the
    TIFF tags (``tiff.ResolutionUnit`` is ``"centimeter"``/``"inch"``/``"none"`` in OpenSlide,
    ``"CENTIMETER"``... in tiffslide). Same rules as :func:`from_tiff_tags`."""
    if f"{prefix}.XResolution" not in props and f"{prefix}.YResolution" not in props:
        return []
    cands = from_tiff_tags(
        props.get(f"{prefix}.XResolution"),
        props.get(f"{prefix}.YResolution"),
        props.get(f"{prefix}.ResolutionUnit"),
        label=f"{prefix}.XResolution/YResolution",
    )
    return [replace(c, kind=kind) for c in cands]


def from_properties(props: Mapping[str, Any]) -> list[Candidate]:
    """All candidates in an OpenSlide or tiffslide property dict (reader mpp keys, raw vendor keys,
    TIFF tag properties), in that order."""
    out: list[Candidate] = []
    for prefix in ("openslide", "tiffslide"):
        out.extend(from_reader_mpp(props, prefix))
    out.extend(from_vendor_keys(props))
    out.extend(from_tiff_properties(props))
    return out


# --------------------------------------------------------------------------------------------------
# TIFF tags


def from_tiff_tags(
    x_resolution: Any, y_resolution: Any, resolution_unit: Any, *, label: str = "TIFF XResolution/YResolution"
) -> list[Candidate]:
    """TIFF 6.0 XResolution/YResolution (tags 282/283, RATIONAL: pixels per ResolutionUnit) and
    ResolutionUnit (tag 296: 1 = NONE, 2 = INCH (default when absent), 3 = CENTIMETER).

    Args:
        x_resolution, y_resolution: pixels per unit as a number, numeric string or
            (numerator, denominator) pair as tifffile returns.
        resolution_unit: int code, tifffile ``RESUNIT`` or name; None = absent = INCH (TIFF 6.0).

    NONE gives a rejected candidate: "pixels per unit" with no unit is an aspect ratio (ImageJ
    keeps its unit in the description instead, see :func:`from_imagej`).
    """
    if x_resolution is None and y_resolution is None:
        return []
    unit = _resolution_unit(resolution_unit) or "inch"
    xr, yr = _positive(x_resolution), _positive(y_resolution)
    shown = f"{xr if xr is not None else x_resolution!r}/{yr if yr is not None else y_resolution!r}"
    if unit == "none":
        return [_rejected(f"{label} ({shown} px per unit)", "tiff", "ResolutionUnit NONE: no physical unit")]
    scale = {"inch": _UM_PER_INCH, "centimeter": _UM_PER_CM, "millimeter": _UM_PER_MM, "micrometer": 1.0}.get(unit)
    abbrev = {"inch": "inch", "centimeter": "cm", "millimeter": "mm", "micrometer": "µm"}.get(unit, unit)
    source = f"{label} ({abbrev})"
    if scale is None:
        return [_rejected(source, "tiff", f"unknown ResolutionUnit {resolution_unit!r}")]
    if xr is None and yr is None:
        return [_rejected(source, "tiff", f"resolution {shown} is not a positive number")]
    cand = _make(source, "tiff", scale / xr if xr else None, scale / yr if yr else None)
    return [cand] if cand else []


# --------------------------------------------------------------------------------------------------
# OME-XML


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def from_ome_xml(xml: str | bytes, image_index: int | None = None) -> list[Candidate]:
    """OME-XML ``Image/Pixels@PhysicalSizeX``, ``@PhysicalSizeY`` with ``@PhysicalSizeXUnit``,
    ``@PhysicalSizeYUnit`` (any OME schema version; namespaces ignored).

    Units: every OME ``UnitsLength`` value (:data:`OME_LENGTH_UNITS_UM`); an absent unit attribute
    means micrometre (the schema default). ``Pixel``/``ReferenceFrame`` give a rejected candidate.

    Args:
        image_index: which ``Image`` element to use (tifffile's OME series index); default: the
            image with the most pixels (SizeX * SizeY), i.e. the slide and not its label/macro.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        return [_rejected("OME-XML", "ome", f"OME-XML does not parse: {err}")]
    images = [el for el in root.iter() if _local(el.tag) == "Image"]
    pixels_list = []
    for img in images:
        pix = next((c for c in img if _local(c.tag) == "Pixels"), None)
        if pix is not None:
            pixels_list.append(pix)
    if not pixels_list:
        return []
    if image_index is not None:
        if not 0 <= image_index < len(pixels_list):
            return [_rejected("OME-XML", "ome", f"no Image {image_index} (file has {len(pixels_list)})")]
        pix = pixels_list[image_index]
    else:
        pix = max(pixels_list, key=lambda p: (_positive(p.get("SizeX")) or 0) * (_positive(p.get("SizeY")) or 0))
    sx, sy = pix.get("PhysicalSizeX"), pix.get("PhysicalSizeY")
    if sx is None and sy is None:
        return []
    ux, name_x = _um_per_unit(pix.get("PhysicalSizeXUnit"), default="\u00b5m")
    uy, name_y = _um_per_unit(pix.get("PhysicalSizeYUnit"), default="\u00b5m")
    units = name_x if name_x == name_y else f"{name_x}, {name_y}"
    source = f"OME-XML PhysicalSizeX/Y ({units})"
    for given, factor, name in ((sx, ux, name_x), (sy, uy, name_y)):
        if given is not None and factor is None:
            return [_rejected(source, "ome", f"unit {name!r} is not a physical length")]
    x, y = _positive(sx), _positive(sy)
    # invalid raw strings are passed through so that _make reports them
    cand = _make(source, "ome", x * ux if x is not None and ux else sx, y * uy if y is not None and uy else sy)
    return [cand] if cand else []


# --------------------------------------------------------------------------------------------------
# ImageJ


def _imagej_fields(description: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in description.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def from_imagej(description: str, x_resolution: Any, y_resolution: Any) -> list[Candidate]:
    """ImageJ calibration: ``ImageDescription`` starting with ``ImageJ=`` and holding ``unit=``
    (and ``yunit=`` when y differs), with TIFF XResolution/YResolution = pixels per that unit.

    ImageJ writes ResolutionUnit NONE (or INCH for "inch"), so the TIFF tags alone say nothing;
    ImageJ escapes µ as the six characters ``\\u00B5``. Units recognised: micron, um, µm, \\u00B5m,
    nm, mm, cm, m, inch, and every OME unit symbol. ``unit=pixel`` or no unit: rejected/none.
    Inch/cm calibrations get the density checks (ImageJ turns a 72 dpi TIFF into "1/72 inch").
    """
    if not description.startswith("ImageJ="):
        return []
    fields = _imagej_fields(description)
    unit_x = fields.get("unit")
    unit_y = fields.get("yunit", unit_x)
    if unit_x is None:
        return []
    ux, name_x = _um_per_unit(unit_x)
    uy, name_y = _um_per_unit(unit_y)
    source = f"ImageJ unit={unit_x}" + (f", yunit={unit_y}" if unit_y != unit_x else "") + " + XResolution/YResolution"
    if ux is None or uy is None:
        bad = unit_x if ux is None else unit_y
        return [_rejected(source, "imagej", f"ImageJ unit {bad!r} is not a physical length")]
    xr, yr = _positive(x_resolution), _positive(y_resolution)
    if xr is None and yr is None:
        return [_rejected(source, "imagej", "no XResolution/YResolution (pixels per unit)")]
    density = name_x in ("in", "cm") or name_y in ("in", "cm")
    cand = _make(source, "imagej", ux / xr if xr else None, uy / yr if yr else None, density=density)
    return [cand] if cand else []


# --------------------------------------------------------------------------------------------------
# DICOM


def _dicom_lookup(obj: Any) -> Any:
    """PixelSpacing from a str/sequence, a pydicom Dataset, a keyword dict, a DICOM JSON dict
    (``{"00280030": {"vr": "DS", "Value": [...]}}``), or a WSI dataset where it is nested in
    SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]."""
    if obj is None or isinstance(obj, (str, bytes)):
        return obj
    if isinstance(obj, Mapping):
        for key in ("PixelSpacing", "00280030", "(0028,0030)", "(0028, 0030)", 0x00280030):
            if key in obj:
                v = obj[key]
                if isinstance(v, Mapping) and "Value" in v:  # DICOM JSON model
                    return v["Value"]
                return getattr(v, "value", v)  # pydicom DataElement
        for key in ("SharedFunctionalGroupsSequence", "52009229", "PixelMeasuresSequence", "00289110"):
            if key in obj:
                v = obj[key]
                v = v.get("Value", v) if isinstance(v, Mapping) else getattr(v, "value", v)
                if isinstance(v, Sequence) and v:
                    found = _dicom_lookup(v[0])
                    if found is not None:
                        return found
        return None
    if isinstance(obj, Sequence):
        return obj
    for attr in ("PixelSpacing",):
        if getattr(obj, attr, None) is not None:
            return getattr(obj, attr)
    for attr in ("SharedFunctionalGroupsSequence", "PixelMeasuresSequence"):
        seq = getattr(obj, attr, None)
        if seq:
            found = _dicom_lookup(seq[0])
            if found is not None:
                return found
    return None


def from_dicom_pixel_spacing(value: Any) -> list[Candidate]:
    """DICOM Pixel Spacing (0028,0030), DS, VM 2: *row spacing* (distance between row centres = y)
    then *column spacing* (x), in millimetres (PS3.3 10.7.1.3). Accepts ``"0.00025\\\\0.00025"``,
    a 2-sequence, a pydicom Dataset, a keyword or DICOM JSON dict (see :func:`_dicom_lookup`)."""
    raw = _dicom_lookup(value)
    if raw is None:
        return []
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    parts: list[Any] = raw.replace("\\", " ").split() if isinstance(raw, str) else list(raw)
    source = "DICOM PixelSpacing (mm, row\\col)"
    if not parts or len(parts) > 2:
        return [_rejected(source, "dicom", f"PixelSpacing must have 2 values, got {raw!r}")]
    y_mm = _positive(parts[0])
    x_mm = _positive(parts[1]) if len(parts) > 1 else None
    if y_mm is None and x_mm is None:
        return [_rejected(source, "dicom", f"PixelSpacing {raw!r} is not positive numbers")]
    cand = _make(source, "dicom", x_mm and x_mm * _UM_PER_MM, y_mm and y_mm * _UM_PER_MM)
    return [cand] if cand else []


# --------------------------------------------------------------------------------------------------
# JPEG / PNG densities


def from_jfif(units: int | None, x_density: Any, y_density: Any) -> list[Candidate]:
    """JFIF APP0 density (JFIF 1.02, ITU-T T.871): units 0 = no unit (aspect ratio only),
    1 = dots per inch, 2 = dots per cm; Xdensity/Ydensity are 16-bit pixel counts per unit."""
    if units is None or (x_density is None and y_density is None):
        return []
    label = {1: "dpi", 2: "dots/cm"}.get(int(units))
    if label is None:
        return [
            _rejected(
                f"JPEG JFIF density {x_density}:{y_density}",
                "jfif",
                f"JFIF units {units}: no physical unit (aspect ratio only)",
            )
        ]
    scale = _UM_PER_INCH if units == 1 else _UM_PER_CM
    xd, yd = _positive(x_density), _positive(y_density)
    cand = _make(f"JPEG JFIF density ({label})", "jfif", scale / xd if xd else None, scale / yd if yd else None)
    return [cand] if cand else []


def from_png_phys(x_ppu: Any, y_ppu: Any, unit: int | None) -> list[Candidate]:
    """PNG pHYs chunk (PNG spec 11.3.5.3): pixels per unit X/Y (uint32), unit 1 = metre,
    0 = unknown (aspect ratio only)."""
    if x_ppu is None and y_ppu is None:
        return []
    if unit != 1:
        return [
            _rejected(f"PNG pHYs {x_ppu}:{y_ppu}", "png", f"pHYs unit {unit}: no physical unit (aspect ratio only)")
        ]
    xd, yd = _positive(x_ppu), _positive(y_ppu)
    cand = _make("PNG pHYs (px per metre)", "png", 1e6 / xd if xd else None, 1e6 / yd if yd else None)
    return [cand] if cand else []


# --------------------------------------------------------------------------------------------------
# tifffile adapter (no file I/O beyond what the open TiffFile already does)


def candidates_from_tifffile(tf: Any, series_index: int = 0) -> list[Candidate]:
    """Every TIFF-embedded convention for series ``series_index`` of an open ``tifffile.TiffFile``:
    OME-XML (for the matching OME Image, else the largest), ImageJ calibration, and the TIFF tags of
    the series' level-0 page. Vendor keys are not parsed here: take them from OpenSlide/tiffslide
    properties (:func:`from_properties`)."""
    out: list[Candidate] = []
    series = tf.series[series_index]
    page = series.levels[0].keyframe
    tags = page.tags
    xr = tags["XResolution"].value if "XResolution" in tags else None
    yr = tags["YResolution"].value if "YResolution" in tags else None
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
    if getattr(tf, "is_ome", False) and tf.ome_metadata:
        index = series_index if getattr(series, "kind", "") == "ome" else None
        out.extend(from_ome_xml(tf.ome_metadata, index))
    first = tf.pages.first
    desc = first.description or ""
    if desc.startswith("ImageJ="):
        fx = first.tags["XResolution"].value if "XResolution" in first.tags else None
        fy = first.tags["YResolution"].value if "YResolution" in first.tags else None
        out.extend(from_imagej(desc, fx, fy))
    out.extend(from_tiff_tags(xr, yr, unit))
    return out


# --------------------------------------------------------------------------------------------------
# choosing


def choose(candidates: Iterable[Candidate]) -> tuple[Candidate | None, list[Candidate]]:
    """Pick the level-0 resolution.

    Returns:
        (chosen, all_candidates): ``chosen`` is the first *accepted* candidate in :data:`PRECEDENCE`
        order (ties keep input order), or None; ``all_candidates`` lists every candidate in that
        order, rejected ones included, for reporting. Accepted candidates that disagree with the
        chosen one by more than :data:`ANISOTROPY_TOLERANCE` are logged (the file contradicts itself).
    """
    rank = {k: i for i, k in enumerate(PRECEDENCE)}
    ordered = sorted(candidates, key=lambda c: rank.get(c.kind, len(rank)))
    chosen = next((c for c in ordered if c.accepted), None)
    if chosen is not None and chosen.mpp is not None:
        for other in ordered:
            if other is chosen or not other.accepted or other.mpp is None:
                continue
            if abs(other.mpp - chosen.mpp) > ANISOTROPY_TOLERANCE * min(other.mpp, chosen.mpp):
                logger.warning("resolution sources disagree: using %s; ignoring %s", chosen, other)
    return chosen, ordered
