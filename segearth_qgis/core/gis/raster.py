"""The GDAL primitives the pipeline stands on: grids and windows, bands, the 8-bit stretch, validity, outputs.

Reading through VRTs is source.py's job; every output here is written under a temporary name beside its destination
and renamed at the end.
"""

import contextlib
import math
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr

from ..common import signals
from ..common.files import disk_full_error, temporary_sibling

LABEL_NODATA = 255
CONFIDENCE_NODATA = -1.0
STRETCH_PERCENTILES = (2.0, 98.0)
STRETCH_SAMPLE = 1024
COMPLEX_TYPES = (gdal.GDT_CInt16, gdal.GDT_CInt32, gdal.GDT_CFloat32, gdal.GDT_CFloat64)
NON_FINITE_TYPES = (gdal.GDT_Float32, gdal.GDT_Float64, gdal.GDT_CFloat32, gdal.GDT_CFloat64)
GTIFF_OPTIONS = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]

gdal.UseExceptions()


BLOCK_CACHE_LIMIT = 256 * 2 ** 20
_cache_lock = threading.Lock()
_cache_users = {"count": 0, "previous": None}


@contextlib.contextmanager
def bounded_block_cache(limit: int = BLOCK_CACHE_LIMIT) -> Iterator[None]:
    """Hold GDAL's process-wide block cache (5 % of RAM by default) to ``limit`` bytes while streams run: a stream
    reads and writes each block once, so a larger cache only makes the process grow with the raster. The first
    stream in saves the setting and the last one out restores it."""
    with _cache_lock:
        if _cache_users["count"] == 0:
            _cache_users["previous"] = gdal.GetCacheMax()
            gdal.SetCacheMax(min(_cache_users["previous"], limit))
        _cache_users["count"] += 1
    try:
        yield
    finally:
        with _cache_lock:
            _cache_users["count"] -= 1
            if _cache_users["count"] == 0:
                gdal.SetCacheMax(_cache_users["previous"])


class RasterInputError(ValueError):
    """The input raster or a parameter about it cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Grid:
    """A pixel grid: size, GDAL geotransform (north-up, mirrored or rotated) and CRS (WKT)."""

    width: int
    height: int
    geotransform: tuple[float, float, float, float, float, float]
    srs_wkt: str

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the four corners in the CRS."""
        corners = [gdal.ApplyGeoTransform(self.geotransform, col, row)
                   for col in (0, self.width) for row in (0, self.height)]
        xs, ys = zip(*corners, strict=True)
        return min(xs), min(ys), max(xs), max(ys)


def close_dataset(dataset: gdal.Dataset | ogr.DataSource) -> None:
    """Flush and close a GDAL/OGR dataset: ``Close()`` from GDAL 3.8 on, where ``Destroy()`` is deprecated; before
    3.8 an OGR data source has ``Destroy()`` and a raster dataset closes when its last reference goes."""
    close = getattr(dataset, "Close", None) or getattr(dataset, "Destroy", None)
    if close is not None:
        close()


def open_raster(path: str | os.PathLike) -> gdal.Dataset:
    try:
        dataset = gdal.Open(str(path))
    except RuntimeError as error:
        raise RasterInputError(raster_file_problem(path) or f"GDAL cannot open {path}: {error}") from error
    if dataset is None:
        raise RasterInputError(raster_file_problem(path) or f"GDAL cannot open {path}: {gdal.GetLastErrorMsg()}")
    return dataset


def dataset_files(path: str | os.PathLike) -> list[str]:
    """The files GDAL reads for a dataset (``path``, a VRT's sources, a shapefile's parts); ``[path]`` when GDAL
    cannot open it."""
    files = [os.fspath(path)]
    try:
        dataset = gdal.OpenEx(os.fspath(path))
    except RuntimeError:
        return files
    if dataset is None:
        return files
    return files + [f for f in [*(dataset.GetFileList() or []), *vrt_sources(dataset)] if f != files[0]]


def _is_local(path: str) -> bool:
    """A plain file path: not /vsi…, a URL, or a driver's connection string (GPKG:…, NETCDF:"…":v, PG:…)."""
    return not path.startswith("/vsi") and "://" not in path and not re.match(r"[A-Za-z][A-Za-z0-9_]+:", path)


def no_bands_problem(dataset: gdal.Dataset, path: str | os.PathLike) -> str:
    """Why a dataset without bands cannot be read, naming its subdatasets when it has them (netCDF, HDF)."""
    subdatasets = [name for name, _ in dataset.GetSubDatasets()]
    if subdatasets:
        shown = ", ".join(subdatasets[:3]) + (", ..." if len(subdatasets) > 3 else "")
        return f"{path} holds {len(subdatasets)} subdataset(s), not bands: give one of them as the input ({shown})"
    return f"{path} has no raster bands"


def vrt_sources(dataset: gdal.Dataset) -> list[str]:
    """The source files a VRT names (GDAL's file list leaves out the missing ones); none for other formats."""
    if dataset.GetDriver().ShortName != "VRT":
        return []
    import xml.etree.ElementTree as ElementTree

    folder = os.path.dirname(dataset.GetDescription())
    sources = []
    vrt_xml = dataset.GetMetadata("xml:VRT")[0]  # GDAL's own serialisation of a VRT it has already parsed
    for element in ElementTree.fromstring(vrt_xml).iter("SourceFilename"):  # nosec B314: GDAL's output, no DTD
        name = element.text or ""
        sources.append(os.path.join(folder, name) if element.get("relativeToVRT") == "1" else name)
    return sorted(set(sources))


def raster_file_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a raster file, said before any work: missing, empty, not a raster, a VRT source missing,
    truncated (its first and last pixels of each band are read). None when nothing is found."""
    path = os.fspath(path)
    local = _is_local(path)
    if local and not os.path.exists(path):
        return f"{path} does not exist: check the path"
    if local and os.path.isfile(path) and os.path.getsize(path) == 0:
        return f"{path} is empty (0 bytes): it was not written completely; copy or export it again"
    try:
        dataset = gdal.Open(path)
    except RuntimeError as error:
        return (f"GDAL cannot read {path} ({str(error).strip()}): it is damaged or not a raster; check it with "
                "gdalinfo, or copy or export it again")
    for source in vrt_sources(dataset):
        if _is_local(source) and not os.path.exists(source):
            return f"{path} refers to {source}, which does not exist: restore that file or rebuild the VRT"
    width, height = dataset.RasterXSize, dataset.RasterYSize
    try:
        for index in range(1, dataset.RasterCount + 1):
            band = dataset.GetRasterBand(index)
            band.ReadRaster(0, 0, 1, 1)
            band.ReadRaster(width - 1, height - 1, 1, 1)
    except RuntimeError as error:
        return (f"{path} cannot be read to its end ({str(error).strip()}): the file is truncated or damaged; copy or "
                "export it again")
    return None


def dataset_grid(dataset: gdal.Dataset) -> Grid:
    transform = tuple(dataset.GetGeoTransform(can_return_null=True) or ())
    if not transform:
        raise RasterInputError(f"{dataset.GetDescription()} has no geotransform: georeference it first "
                               "(Raster > Georeferencer) so the result can be placed on the map")
    if transform[1] * transform[5] - transform[2] * transform[4] == 0:
        raise RasterInputError(f"{dataset.GetDescription()} has a degenerate geotransform {transform} (zero pixel "
                               "area): georeference it again (Raster > Georeferencer)")
    wkt = dataset.GetProjection()
    if not wkt:
        raise RasterInputError(f"{dataset.GetDescription()} has no CRS: assign one (Layer Properties > Source, or "
                               "Raster > Projections > Assign Projection)")
    return Grid(dataset.RasterXSize, dataset.RasterYSize, transform, wkt)


def snap_window(grid: Grid, extent: tuple[float, float, float, float] | None = None) -> tuple[int, int, int, int]:
    """The pixel window (col, row, cols, rows) covering ``extent`` (in the raster's CRS), snapped outwards; on a
    rotated grid, the window covers the extent's four corners."""
    if extent is None:
        return 0, 0, grid.width, grid.height
    xmin, ymin, xmax, ymax = extent
    inverse = gdal.InvGeoTransform(grid.geotransform)
    corners = [gdal.ApplyGeoTransform(inverse, x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    eps = 1e-6
    cols = sorted(c for c, _ in corners)
    rows = sorted(r for _, r in corners)
    col0 = max(0, math.floor(cols[0] + eps))
    col1 = min(grid.width, math.ceil(cols[-1] - eps))
    row0 = max(0, math.floor(rows[0] + eps))
    row1 = min(grid.height, math.ceil(rows[-1] - eps))
    if xmax == xmin or ymax == ymin:
        raise RasterInputError(f"the extent {extent} has no width or no height: give xmin, ymin, xmax, ymax of an "
                               "area, or leave it empty for the whole layer")
    if col1 <= col0 or row1 <= row0:
        raise RasterInputError(f"the extent {extent} does not overlap the raster (extent {grid.extent} in its own "
                               "CRS): choose an extent inside the layer, or leave it empty for the whole layer")
    return col0, row0, col1 - col0, row1 - row0


def subgrid(grid: Grid, window: tuple[int, int, int, int], width: int | None = None,
            height: int | None = None) -> Grid:
    """The grid of a pixel window, optionally resampled to ``width`` x ``height`` over the same pixels."""
    col, row, cols, rows = window
    _, a, b, _, d, e = grid.geotransform
    width, height = width or cols, height or rows
    x0, y0 = gdal.ApplyGeoTransform(grid.geotransform, col, row)
    sx, sy = cols / width, rows / height
    return Grid(width, height, (x0, a * sx, b * sy, y0, d * sx, e * sy), grid.srs_wkt)


def default_bands(dataset: gdal.Dataset) -> list[int]:
    """Bands tagged red, green, blue if there are; else 1, 2, 3; a one-band raster gives [1]."""
    interp = {dataset.GetRasterBand(i).GetColorInterpretation(): i for i in range(1, dataset.RasterCount + 1)}
    rgb = [interp.get(c) for c in (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)]
    if all(rgb):
        return rgb
    return [1] if dataset.RasterCount < 3 else [1, 2, 3]


def alpha_band(dataset: gdal.Dataset) -> int | None:
    """The 1-based alpha band that masks the dataset's bands, if there is one."""
    for index in range(1, dataset.RasterCount + 1):
        if dataset.GetRasterBand(index).GetColorInterpretation() == gdal.GCI_AlphaBand:
            return index
    return None


def is_signed_byte(band: gdal.Band) -> bool:
    """Int8 data that GDAL before 3.7 exposes as Byte with PIXELTYPE=SIGNEDBYTE (3.7 and later: GDT_Int8, and asking
    for PIXELTYPE only warns)."""
    return not hasattr(gdal, "GDT_Int8") and band.DataType == gdal.GDT_Byte and \
        band.GetMetadataItem("PIXELTYPE", "IMAGE_STRUCTURE") == "SIGNEDBYTE"


SIGNED_BYTE_LUT = "0:0,127:127,128:-128,255:-1"   # the stored byte to its Int8 value (exact on integers)


def signed_bytes_as_int16(vrt_xml: str) -> str:
    """A VRT's XML whose SIGNEDBYTE bands read as Int16 with their true signed values, so that every GDAL reader
    (stretch, warp, averages) sees -128..127 rather than the stored 0..255."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(vrt_xml)  # nosec B314: GDAL's serialisation of the plugin's own /vsimem VRT
    for band in root.iter("VRTRasterBand"):
        pixel_type = band.find("Metadata[@domain='IMAGE_STRUCTURE']/MDI[@key='PIXELTYPE']")
        if pixel_type is None or pixel_type.text != "SIGNEDBYTE":
            continue
        band.set("dataType", "Int16")
        band.find("Metadata[@domain='IMAGE_STRUCTURE']").remove(pixel_type)
        for source in list(band):
            if source.tag in ("SimpleSource", "ComplexSource"):
                source.tag = "ComplexSource"
                ElementTree.SubElement(source, "LUT").text = SIGNED_BYTE_LUT
    return ElementTree.tostring(root, encoding="unicode")


def check_bands(dataset: gdal.Dataset, bands: Sequence[int] | None) -> list[int]:
    bands = [int(b) for b in (bands or default_bands(dataset))]
    if len(bands) not in (1, 3):
        raise RasterInputError(f"choose three bands (red, green, blue) or one band, not {len(bands)}: {bands}")
    for band in bands:
        if not 1 <= band <= dataset.RasterCount:
            raise RasterInputError(f"band {band} does not exist: {dataset.GetDescription()} has "
                                   f"{dataset.RasterCount} band(s), numbered from 1")
    return bands


@dataclass(frozen=True)
class Stretch:
    """Per band (low, high) values mapped linearly to 0..255; ``None`` passes 8-bit data through unchanged."""

    limits: tuple[tuple[float, float], ...] | None = None

    def apply(self, data: np.ndarray) -> np.ndarray:
        """data: (bands, h, w) in the source type -> uint8."""
        if self.limits is None:
            return data.astype(np.uint8, copy=False)
        out = np.empty(data.shape, np.uint8)
        for i, (low, high) in enumerate(self.limits):
            scaled = (data[i].astype(np.float64) - low) * (255.0 / max(high - low, 1e-12))
            out[i] = np.clip(np.nan_to_num(scaled, nan=0.0), 0, 255).round()
        return out

    def describe(self) -> str:
        if self.limits is None:
            return "8-bit bands used as they are"
        ranges = ", ".join(f"{low:g}..{high:g}" for low, high in self.limits)
        return (f"{STRETCH_PERCENTILES[0]:g}-{STRETCH_PERCENTILES[1]:g} % cumulative cut per band, from a "
                f"{STRETCH_SAMPLE}-pixel overview: {ranges}")


def robust_stretch(dataset: gdal.Dataset, sample: int = STRETCH_SAMPLE, name: str | None = None) -> Stretch:
    """Computed once for the whole raster (never per block), from a reduced read that uses overviews when present.
    ``name``: the file named in errors (default the dataset's description)."""
    name = name or dataset.GetDescription()
    bands = [dataset.GetRasterBand(i) for i in range(1, dataset.RasterCount + 1)]
    if all(b.DataType == gdal.GDT_Byte and not is_signed_byte(b) for b in bands):
        return Stretch()
    if any(b.DataType in COMPLEX_TYPES for b in bands):
        raise RasterInputError(f"{name} has complex (radar) bands, which the optical model cannot read: process it as "
                               "SAR (SENSOR=sar or auto), or choose an optical model")
    factor = max(dataset.RasterXSize, dataset.RasterYSize) / sample
    width = max(1, min(dataset.RasterXSize, round(dataset.RasterXSize / factor)))
    height = max(1, min(dataset.RasterYSize, round(dataset.RasterYSize / factor)))
    valid = read_valid(dataset, 0, 0, dataset.RasterXSize, dataset.RasterYSize, width, height)
    limits = []
    for band in bands:
        values = band.ReadAsArray(buf_xsize=width, buf_ysize=height).astype(np.float64)[valid]
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise RasterInputError(f"{name} has no valid pixels here (all nodata, masked or NaN): choose another "
                                   "extent, or check the layer's nodata value")
        limits.append(tuple(float(v) for v in np.percentile(values, STRETCH_PERCENTILES)))
    return Stretch(tuple(limits))


def read_valid(dataset: gdal.Dataset, col: int, row: int, cols: int, rows: int, width: int | None = None,
               height: int | None = None) -> np.ndarray:
    """True where every band of ``dataset`` is valid: nodata values, alpha and mask bands, and non-finite floats
    (complex values with a non-finite part included)."""
    valid = None
    for i in range(1, dataset.RasterCount + 1):
        band = dataset.GetRasterBand(i)
        flags = band.GetMaskFlags()
        if flags & gdal.GMF_ALL_VALID and band.DataType not in NON_FINITE_TYPES:
            continue
        mask = band.GetMaskBand().ReadAsArray(col, row, cols, rows, buf_xsize=width, buf_ysize=height) > 0
        if band.DataType in NON_FINITE_TYPES:
            mask &= np.isfinite(band.ReadAsArray(col, row, cols, rows, buf_xsize=width, buf_ysize=height))
        valid = mask if valid is None else valid & mask
    if valid is None:
        valid = np.ones((height or rows, width or cols), bool)
    return valid


class RasterWriter:
    """A tiled, compressed GeoTIFF written row by row under a temporary name; ``commit`` renames it into place."""

    def __init__(self, path: str | os.PathLike, grid: Grid, data_type: int, nodata: float,
                 class_names: Sequence[str] | None = None, colors: Sequence[tuple[int, int, int]] | None = None,
                 description: str = "") -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".tif", ".tiff"):
            raise RasterInputError(f"raster outputs are GeoTIFF: name {self.path} with .tif")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.temp = temporary_sibling(self.path)
        signals.register(*self.temp_files())
        try:  # a failure or Ctrl+C while creating it leaves no file: the caller has no writer to discard yet
            driver = gdal.GetDriverByName("GTiff")
            with self.writing():
                self.dataset = driver.Create(str(self.temp), grid.width, grid.height, 1, data_type, GTIFF_OPTIONS)
            self.dataset.SetGeoTransform(grid.geotransform)
            self.dataset.SetProjection(grid.srs_wkt)
            band = self.dataset.GetRasterBand(1)
            band.SetNoDataValue(nodata)
            if description:
                band.SetDescription(description)
            if class_names is not None:
                table = gdal.ColorTable()
                for index, color in enumerate(colors):
                    table.SetColorEntry(index, (*color, 255))
                table.SetColorEntry(int(nodata), (0, 0, 0, 0))
                band.SetRasterColorTable(table)
                band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
                band.SetCategoryNames(list(class_names))
        except BaseException:
            self.discard()
            raise

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """GDAL's write errors said of the output, not of its hidden temporary file: a full disk as such."""
        try:
            yield
        except RuntimeError as error:
            full = disk_full_error(self.path, error)
            if full is not None:
                raise full from error
            text = str(error).replace(str(self.temp), str(self.path))
            raise OSError(f"GDAL could not write {self.path} ({text.strip()}): check the disk and the folder's "
                          "permissions, or choose another output") from error

    def write(self, row: int, array: np.ndarray) -> None:
        with self.writing():
            self.dataset.GetRasterBand(1).WriteArray(array, 0, row)

    def close(self) -> None:
        if self.dataset is not None:
            with self.writing():
                self.dataset.FlushCache()
            self.dataset = None

    def temp_files(self) -> list[Path]:
        return [self.temp, Path(f"{self.temp}.aux.xml")]

    def commit(self) -> None:
        self.close()
        aux = Path(f"{self.temp}.aux.xml")
        final_aux = Path(f"{self.path}.aux.xml")
        if aux.exists():
            os.replace(aux, final_aux)
        elif final_aux.exists():
            final_aux.unlink()
        os.replace(self.temp, self.path)
        signals.unregister(*self.temp_files())

    def discard(self) -> None:
        if self.dataset is not None:  # closed for real: a traceback may still hold one of its bands
            close_dataset(self.dataset)
        self.dataset = None
        for path in self.temp_files():
            if path.exists():
                path.unlink()
        signals.unregister(*self.temp_files())


def category_names(band: gdal.Band) -> list[str]:
    """The band's GDAL category names; GDAL 3.6's GeoTIFF band returns none until its .aux.xml has been loaded."""
    band.GetDescription()
    return list(band.GetCategoryNames() or [])


MAX_CLASSES = 255           # class ids 0..254; 255 is the nodata value of the classified rasters segment writes
RGB_INTERPRETATIONS = (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)
CLASS_RASTER_HINT = "give the classified raster segment wrote (8-bit, one class per value)"


def check_class_raster(path: str | os.PathLike, band: int = 1) -> list[str]:
    """The class names of band ``band`` of a classified raster (GDAL category names, else ``class <id>`` up to the
    largest value), once it has been checked to be one; else a RasterInputError that says what to give instead.

    Refused: a band that does not exist, float or complex values, an RGB image, no valid pixel, values outside
    0..254 without category names, and more than 255 category names.
    """
    names, problem = _class_names(path, band)
    if problem:
        raise RasterInputError(problem)       # raised here, so that its traceback holds no GDAL dataset
    return names


def _class_names(path: str | os.PathLike, band: int) -> tuple[list[str], str | None]:
    """(class names, None), or ([], the sentence saying why band ``band`` of ``path`` is no classified raster)."""
    dataset = open_raster(path)
    if not 1 <= band <= dataset.RasterCount:
        return [], f"band {band} does not exist: {path} has {dataset.RasterCount} band(s), numbered from 1"
    raster_band = dataset.GetRasterBand(band)
    type_name = gdal.GetDataTypeName(raster_band.DataType)
    if type_name != "Byte" and not type_name.startswith(("Int", "UInt")):
        return [], f"{path} band {band} holds {type_name} values, not class ids: {CLASS_RASTER_HINT}"
    names = category_names(raster_band)
    interpretations = {dataset.GetRasterBand(i).GetColorInterpretation() for i in range(1, dataset.RasterCount + 1)}
    if (dataset.RasterCount >= 3 and set(RGB_INTERPRETATIONS) <= interpretations and not names
            and raster_band.GetRasterColorTable() is None):
        return [], f"{path} looks like an RGB image, not a classified raster: give the classified output of segment"
    if len(names) > MAX_CLASSES:
        return [], (f"{path} band {band} has {len(names)} category names, more than the {MAX_CLASSES} classes a "
                    f"classified raster holds: {CLASS_RASTER_HINT}")
    low, high = _value_range(raster_band, exact=not names)
    if low is None:
        return [], (f"{path} has no valid pixels (all nodata): give a classified raster with classes in it, or check "
                    "its nodata value")
    if names:
        return names, None
    if low < 0 or high >= MAX_CLASSES:
        return [], (f"{path} band {band} holds values {int(low)} to {int(high)}, not class ids 0 to "
                    f"{MAX_CLASSES - 1} (at most {MAX_CLASSES} classes): {CLASS_RASTER_HINT}")
    return [f"class {i}" for i in range(int(high) + 1)], None


def _value_range(band: gdal.Band, exact: bool) -> tuple[float | None, float | None]:
    """(min, max) of the valid pixels, (None, None) when there is none; ``exact=False`` tries GDAL's sampled
    estimate first, which proves there are valid pixels but may miss extremes."""
    for approximate in ((False,) if exact else (True, False)):
        try:
            low, high = band.ComputeRasterMinMax(approximate)
        except RuntimeError:
            continue
        if math.isfinite(low) and math.isfinite(high) and low <= high:
            return low, high
    return None, None


def read_class_table(path: str | os.PathLike, band: int = 1) -> tuple[list[str], list[tuple[int, int, int]]]:
    """(class names, RGB colours) stored in a classified raster (checked by ``check_class_raster``): GDAL category
    names and its colour table."""
    names = check_class_raster(path, band)
    dataset = open_raster(path)          # held while its band and colour table are read
    table = dataset.GetRasterBand(band).GetRasterColorTable()
    if table is not None and table.GetCount() >= len(names):
        colors = [tuple(table.GetColorEntry(i)[:3]) for i in range(len(names))]
    else:
        from .style import class_colors

        colors = class_colors(names)
    return names, colors
