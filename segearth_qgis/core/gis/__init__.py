"""GDAL rasters and vectors for the pipeline: reads, SAR inputs, ground units, polygons and styles."""
