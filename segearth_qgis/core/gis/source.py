"""What the pipeline reads: the chosen bands of any GDAL raster over the snapped window, at the processing
resolution, in row strips as 8-bit RGB with a validity mask. How the bands become RGB is a strategy per sensor.

The input is never modified: every read goes through in-memory VRTs (band subset, window, warp to the processing
resolution) that ``close`` removes.
"""

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Sequence

import numpy as np
from osgeo import gdal

from . import sar
from .geo import pixel_size_metres
from .raster import (
    Grid,
    RasterInputError,
    Stretch,
    alpha_band,
    check_bands,
    dataset_grid,
    is_signed_byte,
    no_bands_problem,
    open_raster,
    read_valid,
    robust_stretch,
    signed_bytes_as_int16,
    snap_window,
    subgrid,
)


class OpticalBands:
    """Three bands (red, green, blue) or one (repeated), each stretched to 8 bits once per raster."""

    sensor = "optical"

    def __init__(self, dataset: gdal.Dataset, bands: Sequence[int] | None, polarisation: str | None) -> None:
        self.bands = check_bands(dataset, bands)
        self.notes = []
        self.warnings = []
        first = dataset.GetRasterBand(self.bands[0])
        self.palette = len(self.bands) == 1 and first.GetColorTable() is not None and \
            first.GetColorInterpretation() == gdal.GCI_PaletteIndex
        if self.palette:
            self.notes.append(f"band {self.bands[0]} is a palette: its colour table gives red, green and blue")
        elif len(self.bands) == 1:
            self.warnings.append(f"one band of {dataset.RasterCount}: band {self.bands[0]} is repeated as red, green "
                                 "and blue; the optical model expects colour images"
                                 + ("" if dataset.RasterCount == 1 else " (choose three BANDS for colour)"))
        self.stretch = None

    def prepare(self, source: "ProcessingSource", resampled: bool) -> gdal.Dataset:
        """Compute the stretch from the window; returns the dataset that is resampled (the band subset itself)."""
        stretch = robust_stretch(source.subset, name=source.path)
        if stretch.limits is not None:
            stretch = Stretch(tuple(stretch.limits[i - 1] for i in source.band_index))
        self.stretch = stretch
        return source.subset

    def read(self, reader: gdal.Dataset, band_index: list[int], col: int, row: int, width: int,
             rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(h, w, 3) uint8 and the extra validity this sensor adds (None: nothing more)."""
        data = np.stack([reader.GetRasterBand(i).ReadAsArray(col, row, width, rows) for i in band_index])
        rgb = self.stretch.apply(data)
        if len(rgb) == 1:
            rgb = np.repeat(rgb, 3, axis=0)
        return np.ascontiguousarray(rgb.transpose(1, 2, 0)), None

    def native_valid(self, subset: gdal.Dataset, row: int, width: int, rows: int) -> None:
        return None


class SarBand:
    """One polarisation band as decibels stretched once per raster and replicated to three channels; resampling
    averages linear intensity, never dB or complex values."""

    sensor = "sar"

    def __init__(self, dataset: gdal.Dataset, bands: Sequence[int] | None, polarisation: str | None) -> None:
        band, self.notes = sar.choose_sar_band(dataset, polarisation, bands)
        self.bands = [band]
        self.warnings = []
        self.dataset = dataset
        self.stretch = None
        self.read_scale = None

    def prepare(self, source: "ProcessingSource", resampled: bool) -> gdal.Dataset:
        self.stretch = sar.band_stretch(self.dataset, self.bands[0], source.subset)
        self.read_scale = self.stretch.scale
        if not resampled:
            return source.subset
        source.subset.FlushCache()
        self.read_scale = "intensity"
        return sar.intensity_vrt(source.temporary_name(), source.subset, 1, self.stretch.scale)

    def read(self, reader: gdal.Dataset, band_index: list[int], col: int, row: int, width: int,
             rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        decibels = sar.to_decibels(reader.GetRasterBand(1).ReadAsArray(col, row, width, rows), self.read_scale)
        return self.stretch.replicate(self.stretch.from_decibels(decibels)), np.isfinite(decibels)

    def native_valid(self, subset: gdal.Dataset, row: int, width: int, rows: int) -> np.ndarray:
        """A finite, positive backscatter, so zero-filled borders come out as nodata."""
        values = subset.GetRasterBand(1).ReadAsArray(0, row, width, rows)
        return np.isfinite(sar.to_decibels(values, self.stretch.scale))


BAND_READERS = {reader.sensor: reader for reader in (OpticalBands, SarBand)}


def processing_grids(dataset: gdal.Dataset, extent: tuple[float, float, float, float] | None,
                     resolution: float) -> tuple[tuple[int, int, int, int], Grid, Grid, tuple[float, float]]:
    """(pixel window, output grid, processing grid, the input's pixel size in metres) for ``extent`` at
    ``resolution`` metres (0: native): the grids a run will have, known without reading a pixel."""
    full = dataset_grid(dataset)
    window = snap_window(full, extent)
    pixel_metres = pixel_size_metres(full.geotransform, full.srs_wkt, full.width, full.height)
    _, _, cols, rows = window
    if resolution:
        width = max(1, round(cols * pixel_metres[0] / resolution))
        height = max(1, round(rows * pixel_metres[1] / resolution))
    else:
        width, height = cols, rows
    return window, subgrid(full, window), subgrid(full, window, width, height), pixel_metres


class ProcessingSource:
    """The chosen bands over the snapped window, resampled to the processing resolution, read in row strips as RGB.

    ``resolution`` is the processing ground sample distance in metres (0: native). Downsampling averages the source
    pixels (GDAL ``average``, nodata excluded); upsampling is bilinear. Resampling runs in pixel space, so rotated and
    mirrored grids work alike. ``native`` is the output grid (the input's pixels over the window), ``grid`` the
    processing grid over the same pixels. ``sensor`` picks the band reader (``BAND_READERS``): ``optical`` reads
    ``bands``, ``sar`` one polarisation band (``polarisation``: a name or band number, default VV).
    """

    def __init__(self, path: str | os.PathLike, bands: Sequence[int] | None = None,
                 extent: tuple[float, float, float, float] | None = None, resolution: float = 0.0,
                 sensor: str = "optical", polarisation: str | None = None) -> None:
        self.path = str(path)
        self._names = []
        self.dataset = self.reader = self.resampled_source = self.subset = self.band_reader = None
        try:
            self._open(path, bands, extent, resolution, sensor, polarisation)
        except BaseException:
            self.close()  # no dataset outlives a refusal (a kept traceback would hold it until exit)
            raise

    def _open(self, path: str | os.PathLike, bands: Sequence[int] | None,
              extent: tuple[float, float, float, float] | None, resolution: float, sensor: str,
              polarisation: str | None) -> None:
        self.dataset = open_raster(path)
        if self.dataset.RasterCount == 0:
            raise RasterInputError(no_bands_problem(self.dataset, path))
        if resolution and resolution < 0:
            raise RasterInputError(f"the resolution must be positive metres or 0 for native, not {resolution}")
        self.band_reader = BAND_READERS[sensor](self.dataset, bands, polarisation)
        self.sensor = self.band_reader.sensor
        self.bands = self.band_reader.bands
        self.notes = self.band_reader.notes
        self.warnings = self.band_reader.warnings
        self.window, self.native, self.grid, self.pixel_metres = processing_grids(self.dataset, extent, resolution)
        col, row, cols, rows = self.window
        width, height = self.grid.width, self.grid.height
        unique = sorted(set(self.bands))
        alpha = alpha_band(self.dataset)
        self.subset = gdal.Translate(self.temporary_name(), self.dataset, format="VRT", bandList=unique,
                                     srcWin=list(self.window), outputBounds=[0, 0, cols, -rows],
                                     maskBand=alpha if alpha and alpha not in unique else "auto")
        if any(is_signed_byte(self.subset.GetRasterBand(i)) for i in range(1, len(unique) + 1)):
            self.subset = self._reopened(signed_bytes_as_int16(self.subset.GetMetadata("xml:VRT")[0]))
        self.band_index = [unique.index(b) + 1 for b in self.bands]
        if getattr(self.band_reader, "palette", False):
            self.subset = gdal.Translate(self.temporary_name(), self.subset, format="VRT", rgbExpand="rgb")
            self.band_index = [1, 2, 3]
        resampled = (width, height) != (cols, rows)
        self.resampled_source = self.band_reader.prepare(self, resampled)   # kept open while the warp reads it
        self.stretch = self.band_reader.stretch
        if not resampled:
            self.resampling = "none"
            self.reader = self.subset
        else:
            self.resampling = "average" if width < cols or height < rows else "bilinear"
            self.reader = gdal.Warp(self.temporary_name(), self.resampled_source, format="VRT", width=width,
                                    height=height, outputBounds=(0, -rows, cols, 0), resampleAlg=self.resampling,
                                    dstAlpha=True)

    def _reopened(self, vrt_xml: str) -> gdal.Dataset:
        name = self.temporary_name()
        gdal.FileFromMemBuffer(name, vrt_xml.encode())
        return gdal.Open(name)

    def temporary_name(self) -> str:
        """A /vsimem/ VRT name that ``close`` removes."""
        name = f"/vsimem/segearth-{uuid.uuid4().hex}.vrt"
        self._names.append(name)
        return name

    @property
    def data_type(self) -> str:
        return gdal.GetDataTypeName(self.dataset.GetRasterBand(self.bands[0]).DataType)

    def read(self, row0: int, row1: int, col0: int = 0, col1: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Processing-grid rows [row0, row1) (and columns [col0, col1), default all): uint8 RGB (h, w, 3) and the
        validity mask (h, w)."""
        rows = row1 - row0
        width = (self.grid.width if col1 is None else col1) - col0
        with self.reading(row0, row1):
            valid = self._valid(self.reader, col0, row0, width, rows)
            rgb, sensor_valid = self.band_reader.read(self.reader, self.band_index, col0, row0, width, rows)
        if sensor_valid is not None:
            valid &= sensor_valid
        return rgb, valid

    @contextlib.contextmanager
    def reading(self, row0: int, row1: int) -> Iterator[None]:
        """A GDAL read error mid-run (a damaged block, a source gone) said of the input, not of a /vsimem VRT."""
        try:
            yield
        except RuntimeError as error:
            text = re.sub(r"/vsimem/segearth-[0-9a-f]+\.vrt", self.path, str(error)).strip()
            raise RasterInputError(f"GDAL could not read {self.path} (processing rows {row0}-{row1}: {text}): the "
                                   "file is damaged or truncated, or a source is gone; check it with gdalinfo "
                                   "-checksum, or copy it again") from error

    def _valid(self, dataset: gdal.Dataset, col: int, row: int, cols: int, rows: int) -> np.ndarray:
        if dataset is self.reader and self.resampling != "none":
            return dataset.GetRasterBand(dataset.RasterCount).ReadAsArray(col, row, cols, rows) > 0
        return read_valid(dataset, col, row, cols, rows)

    def native_valid(self, row0: int, row1: int) -> np.ndarray:
        """Output-grid rows [row0, row1): True where the input has data in every chosen band (and the band reader
        accepts the values)."""
        width = self.native.width
        with self.reading(row0, row1):
            valid = self._valid(self.subset, 0, row0, width, row1 - row0)
            sensor_valid = self.band_reader.native_valid(self.subset, row0, width, row1 - row0)
        if sensor_valid is not None:
            valid &= sensor_valid
        return valid

    def close(self) -> None:
        self.reader = self.resampled_source = self.subset = self.dataset = self.band_reader = None
        for name in self._names:
            gdal.Unlink(name)
        self._names = []
