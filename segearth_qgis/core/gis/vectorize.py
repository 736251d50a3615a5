"""Classified rasters to polygons (class id, class name, area in m²) through GDAL's sieve and polygonize, atomically."""

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from osgeo import gdal, ogr, osr

from ..common import signals
from ..common.feedback import Cancelled, Feedback, as_feedback
from ..common.files import temporary_sibling
from .geo import AreaMeter, spatial_reference
from .raster import check_class_raster, close_dataset, open_raster

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".fgb": "FlatGeobuf"}
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp")  # .shp last: complete when seen
SQLITE_SIDECARS = ("-journal", "-wal", "-shm")  # what SQLite writes beside a GeoPackage being written
FIELDS = (("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("area_m2", ogr.OFTReal))
CHECK_EVERY = 64            # features written between two cancel checks


def output_driver(path: str | os.PathLike) -> str:
    """The OGR driver name for an output path, from its extension."""
    driver = DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        raise ValueError(f"cannot write polygons to {path}: the file name must end in one of "
                         f"{', '.join(DRIVERS)} (GeoPackage, Shapefile, GeoJSON, FlatGeobuf)")
    return driver


def polygonize(raster_path: str | os.PathLike, output_path: str | os.PathLike,
               class_names: Sequence[str] | None = None, band: int = 1, simplify: float = 0.0,
               min_area_m2: float = 0.0, connectedness: int = 4, feedback: Feedback | None = None,
               layer_name: str | None = None) -> dict:
    """Writes one polygon per connected region of a class, with ``class_id``, ``class_name`` and ``area_m2``.

    The raster is checked first (``check_class_raster``: integer class ids, valid pixels, not an RGB image). Nodata
    pixels (the band's mask) give no polygon. ``class_names``: a list indexed by class id, else the raster's
    category names, else ``class <id>``. ``min_area_m2``: smaller regions are first merged into their largest
    neighbour (GDAL sieve on an in-memory copy; the input is never modified). ``simplify``: tolerance in the CRS's
    units, applied to each polygon alone (topology preserved within it, not between neighbours). ``connectedness``:
    4 or 8. ``feedback`` gets the progress, 0..1; its cancel stops the work and raises :class:`Cancelled`. The
    output (format from its extension, the raster's CRS) is written under a temporary name in its folder and renamed
    into place, replacing an existing one; on any failure nothing of it is left.
    ``layer_name`` defaults to the file's stem (a shapefile's layer is always named after its file).

    Returns ``{"path", "layer", "features", "area_m2": {class_id: m² of its polygons}, "class_names": {id: name}}``.
    """
    output_path = Path(output_path)
    driver_name = output_driver(output_path)
    if connectedness not in (4, 8):
        raise ValueError(f"connectedness must be 4 or 8, not {connectedness}")
    if simplify < 0 or min_area_m2 < 0:
        raise ValueError("simplify and min_area_m2 must be 0 (off) or positive")
    feedback = as_feedback(feedback)

    stored_names = check_class_raster(raster_path, band)
    dataset = open_raster(raster_path)
    source = dataset.GetRasterBand(band)
    width, height = dataset.RasterXSize, dataset.RasterYSize
    srs_wkt = dataset.GetProjection()
    meter = AreaMeter(srs_wkt, dataset.GetGeoTransform(), width, height)
    srs = spatial_reference(srs_wkt)
    names = list(class_names) if class_names else stored_names
    mask = source.GetMaskBand()
    sieve_share = 0.25 if min_area_m2 > 0 else 0.0
    polygonize_share = 0.45

    feedback.check_cancel()
    labels = source
    if min_area_m2 > 0:
        pixel_m2 = float(meter.row_pixel_areas(height // 2, height // 2 + 1)[0])
        threshold = max(1, math.ceil(min_area_m2 / pixel_m2 - 1e-9))
        if threshold > width * height:
            dataset = source = mask = None  # closed before raising: a kept traceback would hold them open
            raise ValueError(f"MIN_AREA {min_area_m2:g} m2 is larger than the whole raster (about "
                             f"{width * height * pixel_m2:.6g} m2): every region would merge into one; give a smaller "
                             "area")
        copy = gdal.GetDriverByName("MEM").Create("", width, height, 1, source.DataType)
        copy.SetGeoTransform(dataset.GetGeoTransform())     # polygonize takes its coordinates from here
        copy.SetProjection(srs_wkt)
        labels = copy.GetRasterBand(1)
        _run(gdal.SieveFilter, source, mask, labels, threshold, connectedness,
             callback=_callback(feedback, 0.0, sieve_share), what="sieving small regions")

    regions_source = ogr.GetDriverByName("Memory").CreateDataSource("regions")
    regions = regions_source.CreateLayer("regions", srs, ogr.wkbPolygon)
    regions.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    options = ["8CONNECTED=8"] if connectedness == 8 else []
    _run(gdal.Polygonize, labels, mask, regions, 0, options,
         callback=_callback(feedback, sieve_share, polygonize_share), what="polygonizing")
    labels = copy = None

    output_path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_sibling(output_path)
    name = output_path.stem if driver_name == "ESRI Shapefile" else (layer_name or output_path.stem)
    try:
        with signals.in_flight(*_parts(temp), *(f"{temp}{sqlite}" for sqlite in SQLITE_SIDECARS)):
            areas, count, used = _write(regions, temp, driver_name, name, srs, names, meter, simplify, feedback,
                                        sieve_share + polygonize_share)
            _move_into_place(temp, output_path)
    except BaseException:
        _remove_partials(temp)
        raise
    feedback.progress(1.0)
    return {"path": str(output_path), "layer": name, "features": count, "area_m2": dict(sorted(areas.items())),
            "class_names": dict(sorted(used.items()))}


def _callback(feedback: Feedback, start: float, share: float) -> Callable[[float, str, object], int]:
    """A GDAL progress callback over [start, start + share] that returns 0 (stop) once ``feedback`` is cancelled."""
    state = {"stopped": False}

    def callback(complete: float, _message: str, _data: object) -> int:
        if feedback.cancelled():
            state["stopped"] = True
            return 0
        feedback.progress(start + share * min(max(complete, 0.0), 1.0))
        return 1

    callback.state = state
    return callback


def _run(function: Callable, *args: object, callback: Callable, what: str) -> None:
    """A GDAL algorithm with either exception mode: Cancelled when the callback stopped it, RuntimeError on errors."""
    try:
        status = function(*args, callback=callback)
    except RuntimeError as error:
        if callback.state["stopped"]:
            raise Cancelled() from None
        raise RuntimeError(f"GDAL failed {what}: {error}") from error
    if callback.state["stopped"]:
        raise Cancelled()
    if status not in (0, None):
        raise RuntimeError(f"GDAL failed {what}: {gdal.GetLastErrorMsg() or f'error {status}'}")


def _write(regions: ogr.Layer, path: Path, driver_name: str, layer_name: str, srs: osr.SpatialReference,
           names: list, meter: AreaMeter, simplify: float, feedback: Feedback, start: float) -> tuple[dict, int, dict]:
    """Copies the regions to a new dataset at ``path`` with the three fields; returns (areas, count, names used).

    The dataset is closed explicitly before this returns or raises (a traceback may keep its Python object alive),
    so no driver writes to the file after it has been removed.
    """
    driver = ogr.GetDriverByName(driver_name)
    if driver is None:
        raise RuntimeError(f"this GDAL has no {driver_name} driver")
    output = driver.CreateDataSource(str(path))
    if output is None:
        raise RuntimeError(f"cannot create {path}: {gdal.GetLastErrorMsg()}")
    try:
        options = ["ENCODING=UTF-8"] if driver_name == "ESRI Shapefile" else []
        layer = output.CreateLayer(layer_name, srs, ogr.wkbPolygon, options)
        if layer is None:
            raise RuntimeError(f"cannot create a layer in {path}: {gdal.GetLastErrorMsg()}")
        return _copy(layer, regions, path, driver_name, names, meter, simplify, feedback, start)
    finally:
        close_dataset(output)   # closes the file: FlatGeobuf and GeoJSON write it now


def _copy(layer: ogr.Layer, regions: ogr.Layer, path: Path, driver_name: str, names: list, meter: AreaMeter,
          simplify: float, feedback: Feedback, start: float) -> tuple[dict, int, dict]:
    """Creates the fields, then one feature per region: simplified, named and measured."""

    def class_name(class_id: int) -> str:
        if 0 <= class_id < len(names) and names[class_id]:
            return str(names[class_id])
        return f"class {class_id}"

    for field_name, kind in FIELDS:
        field = ogr.FieldDefn(field_name, kind)
        if driver_name == "ESRI Shapefile" and kind == ogr.OFTString:
            longest = max([len(str(n).encode()) for n in names] + [20])
            field.SetWidth(min(254, longest))
        if layer.CreateField(field) != 0:
            raise RuntimeError(f"cannot create the field {field_name} in {path}: {gdal.GetLastErrorMsg()}")
    definition = layer.GetLayerDefn()
    transactions = bool(layer.TestCapability(ogr.OLCTransactions))
    if transactions:
        layer.StartTransaction()
    total = max(regions.GetFeatureCount(), 1)
    areas, used, count = {}, {}, 0
    regions.ResetReading()
    for region in regions:
        if count % CHECK_EVERY == 0:
            feedback.check_cancel()
            feedback.progress(start + (1.0 - start) * count / total)
        class_id = region.GetFieldAsInteger(0)
        geometry = region.GetGeometryRef()
        if simplify > 0:
            simplified = geometry.SimplifyPreserveTopology(simplify)
            if simplified is not None and not simplified.IsEmpty():
                geometry = ogr.ForceToPolygon(simplified)
        area = meter.geometry_m2(geometry)
        feature = ogr.Feature(definition)
        feature.SetField(0, class_id)
        feature.SetField(1, class_name(class_id))
        feature.SetField(2, area)
        feature.SetGeometry(geometry)
        if layer.CreateFeature(feature) != 0:
            raise RuntimeError(f"cannot write a polygon to {path}: {gdal.GetLastErrorMsg()}")
        areas[class_id] = areas.get(class_id, 0.0) + area
        used[class_id] = class_name(class_id)
        count += 1
    feedback.check_cancel()
    if transactions and layer.CommitTransaction() != 0:
        raise RuntimeError(f"cannot write {path}: {gdal.GetLastErrorMsg()}")
    return areas, count, used


def _parts(base: str | os.PathLike) -> list[Path]:
    """The files of a vector dataset at ``base``, in the order they are moved (a shapefile's .shp last)."""
    base = Path(base)
    if base.suffix.lower() == ".shp":
        return [base.with_suffix(ext) for ext in SHAPEFILE_PARTS]
    return [base]


def _move_into_place(temp: Path, final: Path) -> None:
    for part, target in zip(_parts(temp), _parts(final), strict=True):
        if part.exists():
            os.replace(part, target)
        elif target.exists():
            target.unlink()                # a sidecar of the replaced shapefile that the new one does not have


def _remove_partials(temp: Path) -> None:
    """Every file whose name starts with the temporary name (sidecars, journals, a driver's own scratch files)."""
    prefix = Path(temp).stem
    for path in Path(temp).parent.glob(f"{prefix}*"):
        try:
            path.unlink()
        except OSError:
            pass
