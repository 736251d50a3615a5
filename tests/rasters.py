"""Small georeferenced rasters made with GDAL inside the tests (no third-party imagery)."""

import numpy as np
from osgeo import gdal, gdal_array, osr

from tools.dev.synthetic import synthetic_scene

UTM32_ORIGIN = (500000.0, 5600000.0)


def srs_wkt(epsg):
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    return srs.ExportToWkt()


def write_geotiff(path, bands, epsg=25832, geotransform=None, nodata=None, color_interp=None, options=(), wkt=None,
                  descriptions=(), metadata=None, band_metadata=()):
    """``bands``: (n, h, w) array of any numpy type GDAL stores (complex included); the geotransform defaults to
    0.5 m pixels in UTM 32N; ``wkt`` replaces ``epsg``; descriptions and metadata are optional texts."""
    bands = np.asarray(bands)
    count, height, width = bands.shape
    gdal_type = gdal_array.NumericTypeCodeToGDALTypeCode(bands.dtype)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, count, gdal_type, list(options))
    dataset.SetGeoTransform(geotransform or (UTM32_ORIGIN[0], 0.5, 0, UTM32_ORIGIN[1], 0, -0.5))
    dataset.SetProjection(wkt or srs_wkt(epsg))
    if metadata:
        dataset.SetMetadata(metadata)
    for i in range(count):
        band = dataset.GetRasterBand(i + 1)
        band.WriteArray(bands[i])
        if nodata is not None:
            band.SetNoDataValue(nodata)
        if color_interp:
            band.SetColorInterpretation(color_interp[i])
        if i < len(descriptions):
            band.SetDescription(descriptions[i])
        if i < len(band_metadata):
            band.SetMetadata(band_metadata[i])
    dataset = None
    return str(path)


def scene_bands(height, width, seed=0):
    """The generated aerial-looking scene as (3, h, w) uint8."""
    return synthetic_scene(height, width, seed=seed).transpose(2, 0, 1).copy()


def read_band(path, band=1):
    dataset = gdal.Open(str(path))
    return dataset.GetRasterBand(band).ReadAsArray()
