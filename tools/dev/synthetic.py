"""A procedurally generated aerial-looking RGB scene (fields, a river, roads, roofs, trees) for demos and tests."""

import numpy as np


def synthetic_scene(height=480, width=640, seed=0):
    """uint8 HxWx3 RGB; made from the seed alone, so no third-party imagery is needed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[:] = (112, 138, 76)
    fields = (np.floor(xx / (width / 5)) + 3 * np.floor(yy / (height / 4))) % 3
    image[fields == 1] = (168, 150, 96)
    image[fields == 2] = (92, 128, 62)
    river = np.abs(yy - (0.62 * height + 0.08 * height * np.sin(xx / width * 2 * np.pi * 1.5))) < 0.045 * height
    road = (np.abs(xx - 0.33 * width) < 5) | (np.abs(yy - 0.25 * height) < 4)
    for _ in range(int(rng.integers(35, 45))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(6, 16)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = (40, 84, 38)
    image[road] = (128, 128, 124)
    for _ in range(int(rng.integers(18, 26))):
        y0, x0 = rng.uniform(0, 0.5 * height), rng.uniform(0, width)
        h, w = rng.uniform(10, 28, size=2)
        roof = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        image[roof] = rng.choice([(178, 70, 58), (200, 196, 188), (120, 110, 105)])
    image[river] = (46, 86, 128)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_scene_geotiff(path, height, width, seed=0, origin=(356000.0, 5645000.0), pixel=0.5, epsg=25832):
    """The scene as an RGB GeoTIFF of ``pixel``-metre pixels whose top-left corner is ``origin`` in ``epsg``."""
    from osgeo import gdal, osr

    scene = synthetic_scene(height, width, seed=seed)
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), width, height, 3, gdal.GDT_Byte, ["PHOTOMETRIC=RGB"])
    dataset.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    for band in range(3):
        dataset.GetRasterBand(band + 1).WriteArray(scene[..., band])
    dataset.FlushCache()
    return path
