"""Radar (SAR) inputs need their own model and preprocessing: detection, polarisation, decibels, 8-bit stretch."""

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from osgeo import gdal

from ..common.choices import POLARISATIONS, SENSORS
from .raster import COMPLEX_TYPES, STRETCH_PERCENTILES, STRETCH_SAMPLE, RasterInputError, open_raster

DEFAULT_POLARISATION = "VV"
SCALES = ("complex", "amplitude", "intensity", "db")
SAR_DRIVERS = ("SAFE", "SENTINEL1")
DB_RANGE = (-60.0, 30.0)        # where backscatter in decibels lies
DB_RANGE_SHARE = 0.99           # share of the sampled values inside DB_RANGE, and more than half negative, to guess dB
SKIPPED_DOMAINS = ("DERIVED_SUBDATASETS",)   # GDAL's own "amplitude of input bands" text, not the producer's


def _words(pattern: str) -> re.Pattern[str]:
    """Whole tokens, case-insensitive: a match may not touch a letter or a digit, so VV is not found in VVV or HVAC."""
    return re.compile(rf"(?<![A-Z0-9])(?:{pattern})(?![A-Z0-9])")


POLARISATION_WORDS = _words("|".join(POLARISATIONS))
POLARISATION_KEYS = re.compile(r"POLARI[SZ]ATION")
BAND_NAME_KEYS = re.compile(r"NAME|DESC|LABEL")
SAR_WORDS = _words(r"SAR|ASAR|SENTINEL[-_ ]?1[A-D]?|RADARSAT(?:[-_ ]?[12])?|TERRASAR[-_ ]?X|TANDEM[-_ ]?X|"
                   r"COSMO[-_ ]?SKYMED|ICEYE|CAPELLA|PALSAR2?|ALOS[-_ ]?[24]|SAOCOM|NISAR")
MISSION_ABBREVIATIONS = _words(r"S1[A-D]|TSX|TDX|CSK|CSG|RCM|RS2")   # only trusted under MISSION_KEYS
MISSION_KEYS = re.compile(r"MISSION|SATELLITE|PLATFORM|SPACECRAFT|SENSOR|INSTRUMENT|PRODUCT")
PRODUCT_TYPES = _words(r"GRD[HMF]?|SLC")
DB_WORDS = _words(r"DB|DECIBELS?")
INTENSITY_WORDS = _words(r"INTENSITY|POWER|(?:SIGMA|BETA|GAMMA)[-_ ]?(?:0|NOUGHT|NAUGHT)")
AMPLITUDE_WORDS = _words(r"AMPLITUDE|AMP|MAGNITUDE|DN")


@dataclass(frozen=True)
class SensorDecision:
    """``sensor`` is "optical" or "sar"; ``reason`` one sentence for the log; ``polarisations`` one name or None per
    band."""

    sensor: str
    reason: str
    polarisations: tuple[str | None, ...]


def _metadata(gdal_object: gdal.MajorObject) -> list[tuple[str, str]]:
    """(key, value) pairs of every text metadata domain (XML domains are lists, skipped)."""
    items = []
    for domain in [""] + [d for d in gdal_object.GetMetadataDomainList() or [] if d]:
        if domain in SKIPPED_DOMAINS or domain.startswith("xml:"):
            continue
        metadata = gdal_object.GetMetadata(domain)
        if isinstance(metadata, dict):
            items.extend((str(key).upper(), str(value)) for key, value in metadata.items())
    return items


def _found(pattern: re.Pattern[str], text: str) -> list[str]:
    return [match.upper() for match in pattern.findall(text.upper())]


def _named_polarisations(band: gdal.Band) -> set[str]:
    """Polarisation names in the band's description and in its name-like or polarisation metadata."""
    texts = [band.GetDescription()]
    texts += [value for key, value in _metadata(band) if POLARISATION_KEYS.search(key) or BAND_NAME_KEYS.search(key)]
    return {word for text in texts for word in _found(POLARISATION_WORDS, text)}


def band_polarisations(dataset: gdal.Dataset) -> tuple[str | None, ...]:
    """One polarisation name or None per band: the single name its band texts give; a one-band raster also takes the
    single name of the dataset's polarisation metadata."""
    named = [_named_polarisations(dataset.GetRasterBand(i)) for i in range(1, dataset.RasterCount + 1)]
    names = [next(iter(found)) if len(found) == 1 else None for found in named]
    dataset_names = _dataset_polarisations(dataset)
    if len(names) == 1 and names[0] is None and not named[0] and len(dataset_names) == 1:
        names = [dataset_names[0]]
    return tuple(names)


def _dataset_polarisations(dataset: gdal.Dataset) -> list[str]:
    found = [word for key, value in _metadata(dataset) if POLARISATION_KEYS.search(key)
             for word in _found(POLARISATION_WORDS, value)]
    return sorted(set(found), key=found.index)


def _mission_evidence(dataset: gdal.Dataset) -> tuple[list[str], list[str]]:
    """'KEY=value' items of the dataset metadata that name SAR or a SAR mission, and the SAR product types named."""
    items, products = [], []
    texts = _metadata(dataset)
    texts += [("band description", dataset.GetRasterBand(i).GetDescription())
              for i in range(1, dataset.RasterCount + 1)]
    for key, value in texts:
        if _found(SAR_WORDS, value) or (MISSION_KEYS.search(key) and _found(MISSION_ABBREVIATIONS, value)):
            items.append(f"{key}={value[:60]}")
        products += _found(PRODUCT_TYPES, value)
    return items, sorted(set(products))


def _type_names(dataset: gdal.Dataset) -> list[str]:
    names = [gdal.GetDataTypeName(dataset.GetRasterBand(i).DataType) for i in range(1, dataset.RasterCount + 1)]
    return sorted(set(names), key=names.index)


def detect_sensor(dataset: gdal.Dataset) -> SensorDecision:
    """SAR only on positive evidence: a complex data type, polarisation names (VV, VH, HH, HV as whole tokens) in the
    band descriptions or metadata, GDAL's Sentinel-1 drivers, or SAR mission names in the metadata. Anything else is
    optical."""
    polarisations = band_polarisations(dataset)
    types = _type_names(dataset)
    evidence = []
    complex_types = [name for name in types if gdal.GetDataTypeByName(name) in COMPLEX_TYPES]
    if complex_types:
        evidence.append(f"complex data type {', '.join(complex_types)}")
    named = [f"band {i} {name}" for i, name in enumerate(polarisations, 1) if name]
    if named:
        evidence.append(f"polarisation names ({', '.join(named)})")
    unassigned = [name for name in _dataset_polarisations(dataset) if name not in polarisations]
    if unassigned:
        evidence.append(f"polarisation metadata {', '.join(unassigned)}")
    driver = dataset.GetDriver()
    if driver is not None and driver.ShortName in SAR_DRIVERS:
        evidence.append(f"GDAL driver {driver.ShortName} (Sentinel-1 products)")
    missions, products = _mission_evidence(dataset)
    if missions:
        shown = "; ".join(missions[:2]) + ("; ..." if len(missions) > 2 else "")
        evidence.append(f"SAR mission metadata ({shown})")
        if products:
            evidence.append(f"product type {', '.join(products)}")
    if evidence:
        return SensorDecision("sar", f"SAR evidence ({'; '.join(evidence)}): treated as radar; set SENSOR=optical to "
                                     "override", polarisations)
    type_words = f"data type{'s' if len(types) > 1 else ''} {', '.join(types)}"
    return SensorDecision("optical", f"no SAR evidence ({type_words}, {dataset.RasterCount} band"
                                     f"{'s' if dataset.RasterCount != 1 else ''}, no polarisation names or SAR "
                                     "metadata): treated as optical; set SENSOR=sar to force radar processing",
                          polarisations)


def decide_sensor(path: str | os.PathLike | None, requested: str = "auto", model_modality: str | None = None,
                  preset_modality: str | None = None) -> tuple[str, str]:
    """(sensor, reason): how to read the raster at ``path`` and which model runs it. First match wins: the explicit
    model bundle's modality (a SENSOR that contradicts it is an error), an explicit SENSOR, the preset's modality,
    then ``detect_sensor`` on the file (``path`` None, as for web layers: optical)."""
    if requested not in SENSORS:
        raise RasterInputError(f"SENSOR must be one of {', '.join(SENSORS)}, not {requested!r}")
    if model_modality:
        if requested not in ("auto", model_modality):
            raise RasterInputError(f"SENSOR={requested} but the chosen model bundle is a {model_modality} model: "
                                   f"choose a {requested} bundle, or set SENSOR to auto")
        return model_modality, f"{model_modality}, the modality of the chosen model bundle (its manifest)"
    if requested != "auto":
        return requested, f"{requested}, as requested (SENSOR={requested})"
    if preset_modality:
        return preset_modality, f"{preset_modality}, the model the chosen preset runs"
    if path is None:
        return "optical", "optical: the layer is not a GDAL raster file (a web or provider layer)"
    decision = detect_sensor(open_raster(path))
    return decision.sensor, decision.reason


def choose_polarisation(decision: SensorDecision, dataset: gdal.Dataset,
                        requested: str | int | None = None) -> tuple[int, str]:
    """(1-based band number, note for the log). ``requested``: a polarisation name (any case), a band number, or
    None/empty for the VV band if there is one, else band 1."""
    names = decision.polarisations
    available = ", ".join(f"{name} (band {i})" for i, name in enumerate(names, 1) if name) or "none named"
    requested = str(requested).strip() if requested is not None else ""
    if not requested:
        if DEFAULT_POLARISATION in names:
            band = names.index(DEFAULT_POLARISATION) + 1
            return band, f"band {band} (VV) used: VV is the default polarisation; set POLARISATION to choose another"
        why = f"no band is named VV (available: {available})" if any(names) else "no band names its polarisation"
        return 1, (f"band 1{_label(names[0])} used: {why}; set POLARISATION to a polarisation or a band number to "
                   "choose another")
    if requested.isdigit():
        band = int(requested)
        if not 1 <= band <= dataset.RasterCount:
            raise RasterInputError(f"POLARISATION={requested}: band {band} does not exist, {dataset.GetDescription()} "
                                   f"has {dataset.RasterCount} band(s), numbered from 1")
        return band, f"band {band}{_label(names[band - 1])} used as requested (POLARISATION={requested})"
    wanted = requested.upper()
    if wanted not in POLARISATIONS:
        raise RasterInputError(f"POLARISATION={requested!r} is neither a polarisation ({', '.join(POLARISATIONS)}) "
                               "nor a band number")
    if wanted not in names:
        raise RasterInputError(f"{dataset.GetDescription()} has no {wanted} band: available polarisations "
                               f"{available}; choose one of them or give a band number")
    band = names.index(wanted) + 1
    return band, f"band {band} ({wanted}) used as requested (POLARISATION={requested})"


def _label(name: str | None) -> str:
    return f" ({name})" if name else ""


def to_decibels(values: np.ndarray, scale: str) -> np.ndarray:
    """Backscatter in decibels as float64, from values on ``scale``:

    - "complex": intensity = |z|² = re² + im²;
    - "amplitude": intensity = amplitude² (a negative amplitude is invalid);
    - "intensity": linear power, used as it is;
    - "db": already decibels, passed through unchanged.

    dB = 10·log10(intensity). Non-finite values and intensities <= 0 give NaN, for the caller to mask."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    values = np.asarray(values)
    if np.iscomplexobj(values) and scale != "complex":
        raise ValueError(f"complex values need scale 'complex', not {scale!r}")
    if scale == "complex":
        intensity = np.square(values.real, dtype=np.float64) + np.square(values.imag, dtype=np.float64)
    else:
        real = values.astype(np.float64)
        if scale == "db":
            return np.where(np.isfinite(real), real, np.nan)
        intensity = np.where(real >= 0, np.square(real), np.nan) if scale == "amplitude" else real
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(intensity) & (intensity > 0), 10.0 * np.log10(intensity), np.nan)


def _band(dataset: gdal.Dataset, band_number: int) -> gdal.Band:
    if not 1 <= band_number <= dataset.RasterCount:
        raise RasterInputError(f"band {band_number} does not exist: {dataset.GetDescription()} has "
                               f"{dataset.RasterCount} band(s), numbered from 1")
    return dataset.GetRasterBand(band_number)


def sample_values(dataset: gdal.Dataset, band_number: int, sample: int = STRETCH_SAMPLE) -> np.ndarray:
    """The band's valid values (nodata and mask excluded) from a reduced read of at most ``sample`` pixels a side,
    which uses overviews when present; complex bands give complex values."""
    band = _band(dataset, band_number)
    factor = max(dataset.RasterXSize, dataset.RasterYSize) / sample
    width = max(1, min(dataset.RasterXSize, round(dataset.RasterXSize / factor)))
    height = max(1, min(dataset.RasterYSize, round(dataset.RasterYSize / factor)))
    values = band.ReadAsArray(buf_xsize=width, buf_ysize=height)
    if band.GetMaskFlags() & gdal.GMF_ALL_VALID:
        return values.ravel()
    return values[band.GetMaskBand().ReadAsArray(buf_xsize=width, buf_ysize=height) > 0]


def guess_scale(dataset: gdal.Dataset, band_number: int, sample: np.ndarray) -> str:
    """What the band's values are, as a ``to_decibels`` scale; ``sample``: valid values of the band (see
    ``sample_values``). Our rule, first match wins:

    1. "complex" for a complex data type;
    2. "db" when the band description, unit, band or dataset metadata say dB or decibel, or when more than half of the
       finite sampled values are negative and 99 % of them lie within -60..+30 (linear values are never negative);
    3. "intensity" when those texts say intensity, power, sigma0, beta0 or gamma0;
    4. "amplitude" when they say amplitude, magnitude or DN;
    5. otherwise "intensity" for floating-point data and "amplitude" for integer data (digital numbers)."""
    band = _band(dataset, band_number)
    if band.DataType in COMPLEX_TYPES:
        return "complex"
    texts = [band.GetDescription(), band.GetUnitType() or ""]
    texts += [f"{key} {value}" for key, value in _metadata(band) + _metadata(dataset)]
    text = " ".join(texts)
    values = np.asarray(sample, np.float64).ravel()
    values = values[np.isfinite(values)]
    in_range = (values >= DB_RANGE[0]) & (values <= DB_RANGE[1])
    if _found(DB_WORDS, text) or (values.size and np.mean(values < 0) > 0.5 and np.mean(in_range) >= DB_RANGE_SHARE):
        return "db"
    if _found(INTENSITY_WORDS, text):
        return "intensity"
    if _found(AMPLITUDE_WORDS, text):
        return "amplitude"
    return "intensity" if band.DataType in (gdal.GDT_Float32, gdal.GDT_Float64) else "amplitude"


@dataclass(frozen=True)
class SarStretch:
    """One SAR band: values on ``scale`` to decibels, then ``low``..``high`` dB mapped linearly to 0..255. Computed
    once per raster, so every block gets the same mapping."""

    scale: str
    low: float
    high: float
    band: int = 1
    polarisation: str | None = None

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Values of the band (any shape, source type) -> uint8; NaN (invalid) gives 0, for the caller to mask."""
        return self.from_decibels(to_decibels(values, self.scale))

    def from_decibels(self, decibels: np.ndarray) -> np.ndarray:
        scaled = (decibels - self.low) * (255.0 / max(self.high - self.low, 1e-12))
        return np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round().astype(np.uint8)

    @staticmethod
    def replicate(gray: np.ndarray) -> np.ndarray:
        """(h, w) uint8 -> (h, w, 3): the single SAR band as three identical channels, as the reference feeds it."""
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))

    def describe(self) -> str:
        source = "values already in dB" if self.scale == "db" else f"{self.scale} values converted to dB"
        return (f"SAR band {self.band}{_label(self.polarisation)}, {source}; {STRETCH_PERCENTILES[0]:g}-"
                f"{STRETCH_PERCENTILES[1]:g} % cut from a {STRETCH_SAMPLE}-pixel overview: {self.low:.2f}.."
                f"{self.high:.2f} dB to 0..255, replicated to three channels")


def sar_stretch(dataset: gdal.Dataset, band_number: int, scale: str, sample: int = STRETCH_SAMPLE) -> SarStretch:
    """Computed once for the whole raster (never per block): the 2nd and 98th percentiles of the valid, finite dB
    values of a reduced read."""
    decibels = to_decibels(sample_values(dataset, band_number, sample), scale)
    decibels = decibels[np.isfinite(decibels)]
    if decibels.size == 0:
        raise RasterInputError(f"band {band_number} of {dataset.GetDescription()} has no valid pixels (all nodata, "
                               f"masked, NaN or not positive as {scale})")
    low, high = (float(v) for v in np.percentile(decibels, STRETCH_PERCENTILES))
    return SarStretch(scale, low, high, band_number, band_polarisations(dataset)[band_number - 1])


def choose_sar_band(dataset: gdal.Dataset, polarisation: str | int | None = None,
                    bands: Sequence[int] | None = None) -> tuple[int, list[str]]:
    """(1-based band, notes for the log): the polarisation band that the SAR model reads."""
    band, note = choose_polarisation(detect_sensor(dataset), dataset, polarisation)
    notes = [note]
    if bands:
        notes.append(f"BANDS {list(bands)} ignored: SAR reads one polarisation band (set POLARISATION to choose it)")
    return band, notes


def band_stretch(dataset: gdal.Dataset, band_number: int, subset: gdal.Dataset, subset_band: int = 1) -> SarStretch:
    """The stretch of ``dataset``'s band as read through ``subset`` (a window of it): the scale is guessed from the
    band's own texts and the window's values, the dB cut from the window."""
    scale = guess_scale(dataset, band_number, sample_values(subset, subset_band))
    stretch = sar_stretch(subset, subset_band, scale)
    return SarStretch(scale, stretch.low, stretch.high, band_number, band_polarisations(dataset)[band_number - 1])


INTENSITY_FUNCTIONS = {"complex": "intensity", "amplitude": "intensity", "intensity": "real", "db": "dB2pow"}


def intensity_vrt(name: str, source: gdal.Dataset, band_number: int, scale: str) -> gdal.Dataset:
    """A VRT named ``name`` whose one band is ``source``'s band as linear intensity (GDAL pixel functions), on a
    pixel-space north-up grid, so that resampling it averages backscatter power as multilooking does.

    Its nodata is the intensity of the source's nodata value, or 0 (no backscatter, as on GRD borders) without one."""
    source_band = source.GetRasterBand(band_number)
    vrt = gdal.GetDriverByName("VRT").Create(name, source.RasterXSize, source.RasterYSize, 0)
    vrt.SetGeoTransform((0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    transfer = "CFloat64" if scale == "complex" else "Float64"
    vrt.AddBand(gdal.GDT_Float32, ["subClass=VRTDerivedRasterBand",
                                   f"PixelFunctionType={INTENSITY_FUNCTIONS[scale]}", f"SourceTransferType={transfer}"])
    band = vrt.GetRasterBand(1)
    band.SetMetadataItem("source_0", f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{source.GetDescription()}"
                                     f"</SourceFilename><SourceBand>{band_number}</SourceBand></SimpleSource>",
                         "new_vrt_sources")
    nodata = source_band.GetNoDataValue()
    band.SetNoDataValue(0.0 if nodata is None else float(_linear_intensity(nodata, scale)))
    return vrt


def _linear_intensity(value: float, scale: str) -> float:
    if scale == "db":
        return 10.0 ** (value / 10.0)
    return value if scale == "intensity" else value * value
