"""Small georeferenced rasters made with GDAL inside the tests (no third-party imagery)."""

import numpy as np
from osgeo import gdal, osr

from segearth_qgis.core.synthetic import synthetic_scene

UTM32_ORIGIN = (500000.0, 5600000.0)


def srs_wkt(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_geotiff(path, bands, epsg=25832, geotransform=None, nodata=None, color_interp=None, options=()):
    """``bands``: (n, h, w) array of any GDAL type; the geotransform defaults to 0.5 m pixels in UTM 32N."""
    bands = np.asarray(bands)
    count, height, width = bands.shape
    gdal_type = gdal.GetDataTypeByName({"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}[str(bands.dtype)])
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, count, gdal_type, list(options))
    dataset.SetGeoTransform(geotransform or (UTM32_ORIGIN[0], 0.5, 0, UTM32_ORIGIN[1], 0, -0.5))
    dataset.SetProjection(srs_wkt(epsg))
    for i in range(count):
        band = dataset.GetRasterBand(i + 1)
        band.WriteArray(bands[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if color_interp:
            band.SetColorInterpretation(color_interp[i])
    dataset = None
    return str(path)


def scene_bands(height, width, seed=0):
    """The generated aerial-looking scene as (3, h, w) uint8."""
    return synthetic_scene(height, width, seed=seed).transpose(2, 0, 1).copy()


def read_band(path, band=1):
    dataset = gdal.Open(str(path))
    return dataset.GetRasterBand(band).ReadAsArray()
