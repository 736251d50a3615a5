"""Classified raster to polygons with class id, class name and area in m2, through GDAL (sieve, polygonize)."""

import math
import os
import uuid
from pathlib import Path

from osgeo import gdal, ogr, osr

from .geo import AreaMeter
from .segment import Cancelled

DRIVERS = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON",
           ".fgb": "FlatGeobuf"}
SHAPEFILE_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix")

gdal.UseExceptions()
ogr.UseExceptions()


def _driver(path):
    driver = DRIVERS.get(Path(path).suffix.lower())
    if driver is None:
        raise ValueError(f"polygons are written as {', '.join(sorted(DRIVERS))}: rename {path} with one of these")
    return driver


def _files(base):
    """Every file a vector dataset at ``base`` consists of (a shapefile has sidecars)."""
    base = Path(base)
    if base.suffix.lower() == ".shp":
        return [base.with_suffix(ext) for ext in SHAPEFILE_PARTS]
    return [base]


def polygonize(raster_path, output_path, class_names=None, band=1, simplify=0.0, min_area_m2=0.0, connectedness=4,
               progress=None, cancelled=None):
    """Polygons of every class region (nodata excluded) with ``class_id``, ``class_name``, ``area_m2``.

    ``min_area_m2`` merges smaller regions into their largest neighbour first (GDAL sieve on a copy, the input is
    untouched); ``simplify`` is a tolerance in the raster's CRS units. Written under a temporary name and renamed.
    Returns ``{"features": n, "area_m2": {class_id: total}}``.
    """
    driver = _driver(output_path)
    dataset = gdal.Open(str(raster_path))
    source = dataset.GetRasterBand(band)
    names = list(class_names or source.GetCategoryNames() or [])
    meter = AreaMeter(dataset.GetProjection(), dataset.GetGeoTransform(), dataset.RasterXSize, dataset.RasterYSize)
    cancelled = cancelled or (lambda: False)

    def callback(fraction, _message, _data):
        if progress is not None:
            progress(fraction)
        return 0 if cancelled() else 1

    options = [f"8CONNECTED={'8' if connectedness == 8 else '4'}"]
    if min_area_m2 > 0:
        pixel = float(meter.row_pixel_areas(dataset.RasterYSize // 2, dataset.RasterYSize // 2 + 1)[0])
        copy = gdal.GetDriverByName("MEM").CreateCopy("", dataset)
        sieved = copy.GetRasterBand(band)
        gdal.SieveFilter(sieved, source.GetMaskBand(), sieved, max(1, math.ceil(min_area_m2 / pixel)),
                         connectedness)
        source = sieved
    srs = osr.SpatialReference(wkt=dataset.GetProjection())
    regions = ogr.GetDriverByName("Memory").CreateDataSource("regions")
    layer = regions.CreateLayer("regions", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    try:
        gdal.Polygonize(source, source.GetMaskBand(), layer, 0, options, callback=callback)
    except RuntimeError as error:
        if cancelled():
            raise Cancelled() from None
        raise error
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temp = output_path.with_name(f".{output_path.stem}.partial-{uuid.uuid4().hex[:8]}{output_path.suffix}")
    totals = {}
    try:
        out = ogr.GetDriverByName(driver).CreateDataSource(str(temp))
        target = out.CreateLayer(output_path.stem, srs, ogr.wkbPolygon)
        for name, kind in (("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("area_m2", ogr.OFTReal)):
            target.CreateField(ogr.FieldDefn(name, kind))
        definition = target.GetLayerDefn()
        count = 0
        target.StartTransaction()
        for region in layer:
            if count % 1000 == 0 and cancelled():
                raise Cancelled()
            class_id = region.GetField("class_id")
            geometry = region.GetGeometryRef()
            if simplify > 0:
                geometry = geometry.SimplifyPreserveTopology(simplify)
            area = meter.geometry_m2(geometry)
            feature = ogr.Feature(definition)
            feature.SetField("class_id", class_id)
            feature.SetField("class_name", names[class_id] if class_id < len(names) else f"class {class_id}")
            feature.SetField("area_m2", area)
            feature.SetGeometry(geometry)
            target.CreateFeature(feature)
            totals[class_id] = totals.get(class_id, 0.0) + area
            count += 1
        target.CommitTransaction()
        out = target = None
        for part, final in zip(_files(temp), _files(output_path), strict=True):
            if part.exists():
                os.replace(part, final)
            elif final.exists():
                final.unlink()
    finally:
        for part in _files(temp):
            if part.exists():
                part.unlink()
    return {"features": count, "area_m2": totals}
