"""What differs between the QGIS versions the plugin runs on, in one place: QGIS 3.22 (Debian 12: Python 3.11,
numpy 1.24, GDAL 3.6) and QGIS 3.40 LTR (Python 3.13, numpy 2, GDAL 3.10). ``build.py test --qgis 3.40`` runs the QGIS
tests under the latter.

The core may import this module without QGIS: the Processing enums are looked up on first use.
"""


def close_dataset(dataset):
    """Flush and close a GDAL/OGR dataset: ``Close()`` from GDAL 3.8 on, where ``Destroy()`` is deprecated."""
    getattr(dataset, "Close", dataset.Destroy)()


PROCESSING_ENUMS = ("ADVANCED", "DOUBLE", "INTEGER", "FILE", "FOLDER", "POLYGONS")


def __getattr__(name):
    """The PROCESSING_ENUMS: the Qgis.* scoped enums from QGIS 3.36 on (the only spelling in QGIS 4), the
    class-scoped names before."""
    if name not in PROCESSING_ENUMS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from qgis.core import (
        Qgis,
        QgsProcessing,
        QgsProcessingParameterDefinition,
        QgsProcessingParameterFile,
        QgsProcessingParameterNumber,
    )

    if hasattr(Qgis, "ProcessingParameterFlag"):
        enums = {"ADVANCED": Qgis.ProcessingParameterFlag.Advanced,
                 "DOUBLE": Qgis.ProcessingNumberParameterType.Double,
                 "INTEGER": Qgis.ProcessingNumberParameterType.Integer,
                 "FILE": Qgis.ProcessingFileParameterBehavior.File,
                 "FOLDER": Qgis.ProcessingFileParameterBehavior.Folder,
                 "POLYGONS": Qgis.ProcessingSourceType.VectorPolygon}
    else:
        enums = {"ADVANCED": QgsProcessingParameterDefinition.Flag.FlagAdvanced,
                 "DOUBLE": QgsProcessingParameterNumber.Type.Double,
                 "INTEGER": QgsProcessingParameterNumber.Type.Integer,
                 "FILE": QgsProcessingParameterFile.Behavior.File,
                 "FOLDER": QgsProcessingParameterFile.Behavior.Folder,
                 "POLYGONS": QgsProcessing.SourceType.TypeVectorPolygon}
    globals().update(enums)
    return enums[name]
