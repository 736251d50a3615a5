"""Ground units for rasters in any CRS: pixel sizes in metres and areas in square metres, through OSR transforms.

A projected CRS whose units are metres on the ground to within ``PLANAR_TOLERANCE`` over the whole raster (UTM,
national grids, state planes in feet) is measured in its own units times the linear unit, so a 0.5 m UTM pixel is
exactly 0.5 m and 0.25 m². Any other CRS (geographic, or a projection that stretches the ground, such as Web Mercator
away from the equator) is measured on its ellipsoid: lengths in a local azimuthal equidistant projection, areas in
Lambert azimuthal equal-area projections.
"""

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from osgeo import ogr, osr

PLANAR_TOLERANCE = 0.01     # largest relative scale error of the CRS over the raster for planar measures
BIN_DEGREES = 10.0          # equal-area projections are centred on a grid of this many degrees
SAMPLE_COLUMNS = 9          # columns measured per row where a row's pixels may differ in ground area

NO_CRS = "the raster has no coordinate reference system: assign one in QGIS: Layer Properties > Source"


def spatial_reference(wkt: str) -> osr.SpatialReference:
    """An OSR object from WKT (or any user input OSR accepts) in traditional GIS order (x = easting/longitude)."""
    if not wkt or not str(wkt).strip():
        raise ValueError(NO_CRS)
    srs = osr.SpatialReference()
    try:
        status = srs.SetFromUserInput(str(wkt))
    except RuntimeError as error:
        raise ValueError(f"{NO_CRS} (OSR cannot read it: {error})") from error
    if status != 0:
        raise ValueError(f"{NO_CRS} (OSR cannot read it)")
    return _traditional(srs)


def _traditional(srs: osr.SpatialReference) -> osr.SpatialReference:
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return srs


def _transform(source: osr.SpatialReference, target: osr.SpatialReference) -> osr.CoordinateTransformation:
    return osr.CoordinateTransformation(source, target)


def _apply(transform: osr.CoordinateTransformation, xy: npt.ArrayLike) -> np.ndarray:
    """(n, 2) points through a transform; points that fail come back as NaN."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    if len(xy) == 0:
        return xy.copy()
    try:
        out = np.array(transform.TransformPoints(xy.tolist()), np.float64)[:, :2]
    except RuntimeError:
        out = np.array([_apply_one(transform, x, y) for x, y in xy], np.float64)
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out


def _apply_one(transform: osr.CoordinateTransformation, x: float, y: float) -> tuple[float, float]:
    try:
        return transform.TransformPoint(float(x), float(y))[:2]
    except RuntimeError:
        return (math.nan, math.nan)


def _pixel_to_world(geotransform: Sequence[float], col: npt.ArrayLike,
                    row: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x0, a, b, y0, d, e = geotransform
    col, row = np.asarray(col, np.float64), np.asarray(row, np.float64)
    return x0 + a * col + b * row, y0 + d * col + e * row


class _Ellipsoid:
    """The raster's CRS beside its own geographic CRS: lon/lat of raster points and local projections around them."""

    def __init__(self, srs: osr.SpatialReference) -> None:
        if srs.IsGeocentric():
            raise ValueError("a geocentric CRS cannot georeference a raster: assign a geographic or projected CRS "
                             "in QGIS: Layer Properties > Source")
        self.srs = srs
        self.geographic = bool(srs.IsGeographic())
        self.geog = _traditional(srs.CloneGeogCS()) if (self.geographic or srs.IsProjected()) else None
        self.to_lonlat = None if self.geog is None or self.geographic else _transform(srs, self.geog)
        self._projections = {}

    def lonlat(self, xy: npt.ArrayLike) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return xy.copy() if self.geographic else _apply(self.to_lonlat, xy)

    def local(self, kind: str, lat: float, lon: float) -> osr.CoordinateTransformation:
        """A transform from the raster's CRS to an ``aeqd`` or ``laea`` projection centred at (lat, lon)."""
        key = (kind, lat, lon)
        if key not in self._projections:
            target = self.geog.Clone()
            if kind == "aeqd":
                target.SetAE(lat, lon, 0.0, 0.0)
            else:
                target.SetLAEA(lat, lon, 0.0, 0.0)
            self._projections[key] = _transform(self.srs, _traditional(target))
        return self._projections[key]

    def laea_bin(self, lon: float, lat: float) -> osr.CoordinateTransformation:
        """The equal-area projection for points near (lon, lat): centred on a ``BIN_DEGREES`` grid."""
        lat_c = float(np.clip(round(lat / BIN_DEGREES) * BIN_DEGREES, -90.0, 90.0))
        lon_c = float(((round(lon / BIN_DEGREES) * BIN_DEGREES + 180.0) % 360.0) - 180.0)
        return self.local("laea", lat_c, lon_c)

    def ground_vectors(self, geotransform: Sequence[float], col: float, row: float) -> tuple[float, float] | None:
        """Ground length in metres of the pixel's x and y sides at (col, row), or None where it cannot be measured."""
        xs, ys = _pixel_to_world(geotransform, [col - 0.5, col + 0.5, col, col], [row, row, row - 0.5, row + 0.5])
        lonlat = self.lonlat(np.column_stack([xs, ys]))
        centre = self.lonlat([_pixel_to_world(geotransform, col, row)])[0]
        if not np.isfinite(centre).all() or not np.isfinite(lonlat).all():
            return None
        local = _apply(self.local("aeqd", float(centre[1]), float(centre[0])), np.column_stack([xs, ys]))
        if not np.isfinite(local).all():
            return None
        return float(np.hypot(*(local[1] - local[0]))), float(np.hypot(*(local[3] - local[2])))


def _nominal_sizes(geotransform: Sequence[float]) -> tuple[float, float]:
    _, a, b, _, d, e = geotransform
    return math.hypot(a, d), math.hypot(b, e)


def _measure(srs_wkt: str, geotransform: Sequence[float] | None, width: int,
             height: int) -> tuple[osr.SpatialReference, _Ellipsoid | None]:
    """(srs, ellipsoid or None): None where the CRS's own units are ground metres (times the unit) over the raster."""
    if geotransform is None or len(tuple(geotransform)) != 6:
        raise ValueError("the raster has no geotransform: georeference it first (Raster > Georeferencer in QGIS)")
    srs = spatial_reference(srs_wkt)
    if srs.IsLocal():
        return srs, None
    ellipsoid = _Ellipsoid(srs)
    if ellipsoid.geographic:
        return srs, ellipsoid
    unit = srs.GetLinearUnits()
    nominal = np.array(_nominal_sizes(geotransform)) * unit
    measured = []
    for fx in (0.0, 0.5, 1.0):
        for fy in (0.0, 0.5, 1.0):
            ground = ellipsoid.ground_vectors(geotransform, fx * width, fy * height)
            if ground is not None:
                measured.append(ground)
    if measured and np.abs(np.array(measured) / nominal - 1.0).max() > PLANAR_TOLERANCE:
        return srs, ellipsoid
    return srs, None


def pixel_size_metres(geotransform: Sequence[float], srs_wkt: str, width: int, height: int) -> tuple[float, float]:
    """(x, y) ground size in metres of one pixel, measured at the raster's centre.

    Projected CRSs in metres or feet: the pixel size times the CRS's linear unit. Geographic CRSs (and projections
    that stretch the ground by more than ``PLANAR_TOLERANCE``, e.g. Web Mercator): the pixel's sides measured in an
    azimuthal equidistant projection centred on the raster's centre pixel.
    """
    srs, ellipsoid = _measure(srs_wkt, geotransform, width, height)
    if ellipsoid is None:
        unit = srs.GetLinearUnits()
        size_x, size_y = _nominal_sizes(geotransform)
        return size_x * unit, size_y * unit
    ground = ellipsoid.ground_vectors(geotransform, width / 2.0, height / 2.0)
    if ground is None:
        raise ValueError("the raster's centre cannot be placed on the ellipsoid of its CRS: check the CRS and "
                         "the georeferencing in QGIS: Layer Properties > Source")
    return ground


def _shoelace(quads: np.ndarray) -> np.ndarray:
    """Areas of (n, 4, 2) quadrilaterals."""
    x, y = quads[..., 0], quads[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1))


class AreaMeter:
    """Areas in m² of a raster's pixels and of polygons in its CRS, consistent with each other.

    Planar CRSs (see :func:`pixel_size_metres`): planar area times the linear unit squared, the same for every pixel.
    Other CRSs: areas in a Lambert azimuthal equal-area projection (one per ``BIN_DEGREES`` cell, so any extent
    works), per row of pixels; polygon edges are first split at pixel length so both follow the ellipsoid alike.
    """

    def __init__(self, srs_wkt: str, geotransform: Sequence[float], width: int, height: int) -> None:
        self.geotransform = tuple(float(v) for v in geotransform)
        self.width, self.height = int(width), int(height)
        self.srs, self.ellipsoid = _measure(srs_wkt, self.geotransform, width, height)
        self.planar = self.ellipsoid is None
        self.unit = 1.0 if self.srs.IsGeographic() else self.srs.GetLinearUnits()
        _, a, b, _, d, e = self.geotransform
        self.planar_pixel_m2 = abs(a * e - b * d) * self.unit ** 2
        self.segment_length = min(v for v in _nominal_sizes(self.geotransform) if v > 0) * (1.0 + 1e-9)

    def geometry_m2(self, geometry: ogr.Geometry | None) -> float:
        """Area in m² of a polygon or multipolygon (OGR geometry in the raster's CRS); the argument is not changed."""
        if geometry is None or geometry.IsEmpty():
            return 0.0
        if self.planar:
            return geometry.GetArea() * self.unit ** 2
        envelope = geometry.GetEnvelope()
        centre = self.ellipsoid.lonlat([((envelope[0] + envelope[1]) / 2.0, (envelope[2] + envelope[3]) / 2.0)])[0]
        if not np.isfinite(centre).all():
            raise ValueError("a polygon lies outside the area where its CRS is defined: its area cannot be measured")
        clone = geometry.Clone()
        clone.Segmentize(self.segment_length)
        if clone.Transform(self.ellipsoid.laea_bin(float(centre[0]), float(centre[1]))) != ogr.OGRERR_NONE:
            raise ValueError("a polygon could not be projected to measure its area: check the raster's CRS")
        return clone.GetArea()

    def row_pixel_areas(self, row_start: int, row_stop: int) -> np.ndarray:
        """float64 (row_stop - row_start,): the ground area in m² of one pixel in each of these rows."""
        rows = np.arange(row_start, row_stop, dtype=np.float64)
        if self.planar:
            return np.full(len(rows), self.planar_pixel_m2)
        if len(rows) == 0:
            return np.zeros(0)
        count = max(1, min(self.width, SAMPLE_COLUMNS))
        cols = np.floor((np.arange(count) + 0.5) * self.width / count)
        col, row = np.meshgrid(cols, rows)                                 # (rows, count)
        corners_c = col[..., None] + np.array([0.0, 1.0, 1.0, 0.0])
        corners_r = row[..., None] + np.array([0.0, 0.0, 1.0, 1.0])
        xs, ys = _pixel_to_world(self.geotransform, corners_c, corners_r)  # (rows, count, 4)
        quads = np.stack([xs, ys], axis=-1).reshape(-1, 4, 2)
        areas = self._quad_areas(quads).reshape(len(rows), count)
        with np.errstate(invalid="ignore"):
            result = np.nanmean(np.where(np.isfinite(areas), areas, np.nan), axis=1)
        if not np.isfinite(result).all():
            raise ValueError("some rows of the raster lie outside the area where its CRS is defined: their pixel "
                             "areas cannot be measured")
        return result

    def _quad_areas(self, quads: np.ndarray) -> np.ndarray:
        """Ground areas of (n, 4, 2) quadrilaterals in the raster's CRS; NaN where they cannot be projected."""
        lonlat = self.ellipsoid.lonlat(quads.mean(axis=1))
        areas = np.full(len(quads), np.nan)
        valid = np.isfinite(lonlat).all(axis=1)
        lat_bin = np.where(valid, np.round(np.nan_to_num(lonlat[:, 1]) / BIN_DEGREES), 0)
        lon_bin = np.where(valid, np.round(np.nan_to_num(lonlat[:, 0]) / BIN_DEGREES), 0)
        for lat_b, lon_b in set(zip(lat_bin[valid].tolist(), lon_bin[valid].tolist(), strict=True)):
            members = valid & (lat_bin == lat_b) & (lon_bin == lon_b)
            transform = self.ellipsoid.laea_bin(lon_b * BIN_DEGREES, lat_b * BIN_DEGREES)
            projected = _apply(transform, quads[members].reshape(-1, 2)).reshape(-1, 4, 2)
            areas[members] = _shoelace(projected)
        return areas
