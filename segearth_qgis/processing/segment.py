"""``segearth:segment``: any raster layer and a typed vocabulary to a styled classified raster, polygons and areas."""

import math
import os
import uuid

from qgis.core import (
    QgsMultiBandColorRenderer,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterPipe,
)

from ..core.common.checks import MAX_WINDOWS
from ..core.common.choices import BACKENDS, DEVICES, PRECISIONS, SENSORS
from .base import (
    DOUBLE,
    INTEGER,
    ProcessingFeedbackBridge,
    SegEarthAlgorithm,
    advanced,
    bundle_file,
    choice,
    configure_model_store,
    runtime_import,
)

HELP_TEXT = """Maps the raster into the classes you type: one class per line, commas between synonyms \
(e.g. <i>building,roof</i> / <i>road</i> / <i>water,river</i> / <i>tree</i>). No training, no annotation.
<h3>Classes and presets</h3>
A line named background, clutter, others or unclassified takes the pixels whose best class probability is below \
THRESHOLD; without one, an extra class <i>unclassified</i> is added for them (BACKGROUND names another). PRESET \
loads an official SegEarth-OV dataset setting (classes, threshold, background, lambda); typed CLASSES replace only \
its classes.
<h3>Resolution</h3>
RESOLUTION is the ground sample distance (metres, also for geographic CRSs) at which the model looks; 0 keeps the \
native pixels. The model sees 224-pixel windows, so objects should span a few dozen pixels: aerial and drone \
images (5-30 cm): 0.3-0.6 m; Pleiades / WorldView pan-sharpened: native or 0.5-1 m; PlanetScope 3 m and \
Sentinel-2 10 m: native, with land-cover words (cropland, forest, urban area) rather than objects. Web layers \
(WMS, XYZ, WCS) need a RESOLUTION. The output is always on the input's pixel grid. Before any work the run is \
estimated (grid, windows, memory): a run that cannot fit in memory is refused with the finest RESOLUTION that fits; \
one over {max_windows} windows (hours of work) needs ALLOW_LARGE.
<h3>Bands</h3>
BANDS gives red, green, blue (1-based). 16-bit and float data are stretched once per run (2-98 % cumulative cut \
per band from an overview). Nodata, alpha and mask bands are respected and come out as nodata (255).
<h3>Radar (SAR)</h3>
SENSOR auto treats the layer as radar only on positive evidence (a complex data type, polarisation names VV/VH/HH/HV \
in band descriptions or metadata, Sentinel-1 or other SAR mission metadata) and says why in the log; set SENSOR=sar \
for radar without such metadata. Radar runs the SAR model on one polarisation band (POLARISATION: VV by default, \
else band 1; a name or a band number; BANDS is ignored): complex and linear values are converted to decibels, \
stretched once per raster (2-98 %) and repeated as three channels; resampling averages linear intensity. A chosen \
MODEL's modality wins over detection.
<h3>Model and device</h3>
MODEL is a model bundle (its folder's manifest.json, or its .zip); empty uses the installed default model. The log \
says which backend and execution provider actually ran."""


def optional_value(parameters, name):
    value = parameters.get(name)
    return None if value is None or value == "" else value


class SegmentAlgorithm(SegEarthAlgorithm):
    NAME = "segment"
    DISPLAY_NAME = "Map classes (open vocabulary)"
    HELP = HELP_TEXT.replace("{max_windows}", f"{MAX_WINDOWS:,}")

    def initAlgorithm(self, config=None):
        from ..core.method.presets import preset_names

        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        self.addParameter(QgsProcessingParameterString("CLASSES", "Classes (one per line, commas between synonyms)",
                                                       multiLine=True, optional=True))
        self.addParameter(choice("PRESET", "Dataset preset", preset_names(), optional=True))
        self.addParameter(QgsProcessingParameterBand("BANDS", "Bands used as red, green, blue", None, "INPUT",
                                                     optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterNumber("RESOLUTION", "Processing resolution in metres (0: native)",
                                                       DOUBLE, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (empty: the whole layer)", optional=True))
        self.addParameter(QgsProcessingParameterNumber("THRESHOLD", "Background probability threshold (default 0, "
                                                       "or the preset's)", DOUBLE, None, optional=True,
                                                       minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterString("BACKGROUND", "Background class name", optional=True))
        self.addParameter(choice("SENSOR", "Sensor", SENSORS, "auto"))
        self.addParameter(QgsProcessingParameterString("POLARISATION", "SAR polarisation or band number (empty: VV, "
                                                       "else band 1)", optional=True))
        self.addParameter(bundle_file("MODEL", "Model bundle (empty: the default model)"))
        self.addParameter(choice("DEVICE", "Device", DEVICES, "auto"))
        self.addParameter(advanced(QgsProcessingParameterNumber("WINDOW", "Window size (px)", INTEGER, None,
                                                                optional=True, minValue=16)))
        self.addParameter(advanced(QgsProcessingParameterNumber("STRIDE", "Window stride (px)", INTEGER, None,
                                                                optional=True, minValue=1)))
        self.addParameter(advanced(QgsProcessingParameterNumber("GBA_LAMBDA", "Global bias alleviation lambda "
                                                                "(default 0.3, or the preset's)", DOUBLE, None,
                                                                optional=True, minValue=0.0)))
        self.addParameter(advanced(choice("BACKEND", "Backend", BACKENDS, "auto")))
        self.addParameter(advanced(choice("PRECISION", "Precision (fp16: CUDA and the torch backend only)", PRECISIONS,
                                          "fp32")))
        self.addParameter(advanced(QgsProcessingParameterNumber("SIMPLIFY", "Polygon simplification tolerance "
                                                                "(layer units, 0: none)", DOUBLE, 0.0, minValue=0.0)))
        self.addParameter(advanced(QgsProcessingParameterNumber("MIN_AREA", "Minimum polygon area in m2 (smaller "
                                                                "regions merge into a neighbour)", DOUBLE, 0.0,
                                                                minValue=0.0)))
        self.addParameter(advanced(QgsProcessingParameterBoolean("ALLOW_LARGE", "Run even when the estimate is very "
                                                                 f"large (over {MAX_WINDOWS:,} windows: hours of "
                                                                 "work)",
                                                                 False)))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_VECTOR", "Class polygons", optional=True,
                                                                  createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT_CONFIDENCE", "Confidence (probability "
                                                                  "of the winning class)", optional=True,
                                                                  createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT_AREAS", "Class areas (CSV)",
                                                                "CSV files (*.csv)", optional=True,
                                                                createByDefault=False))
        self.addOutput(QgsProcessingOutputString("AREAS", "Class areas (JSON)"))
        self.addOutput(QgsProcessingOutputString("RUNTIME", "Backend and execution provider that ran"))

    def processAlgorithm(self, parameters, context, feedback):
        from ..core.common.feedback import Cancelled
        from ..core.gis.raster import RasterInputError
        from ..core.gis.style import class_colors, raster_qml, vector_qml
        from ..core.pipeline import SegmentOutputs, check_request, resolve_options, segment_raster

        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer QGIS can open")
        extent = None
        if optional_value(parameters, "EXTENT") is not None:
            rectangle = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
            if not rectangle.isNull() and not rectangle.isEmpty():
                extent = (rectangle.xMinimum(), rectangle.yMinimum(), rectangle.xMaximum(), rectangle.yMaximum())
        resolution = self.parameterAsDouble(parameters, "RESOLUTION", context)
        bands = (parameters.get("BANDS") if isinstance(parameters.get("BANDS"), str)  # qgis_process: BANDS=3,2,1
                 else self.parameterAsInts(parameters, "BANDS", context)) or renderer_bands(layer)

        def number(name, read=self.parameterAsDouble):
            """None when unset, so that the preset's value (or the default) applies."""
            return None if optional_value(parameters, name) is None else read(parameters, name, context)

        try:
            options, modality, notes = resolve_options(
                classes=self.parameterAsString(parameters, "CLASSES", context),
                preset=self.parameterAsEnumString(parameters, "PRESET", context) or None,
                threshold=number("THRESHOLD"),
                background=self.parameterAsString(parameters, "BACKGROUND", context) or None,
                gba_lambda=number("GBA_LAMBDA"), window=number("WINDOW", self.parameterAsInt),
                stride=number("STRIDE", self.parameterAsInt), resolution=resolution, bands=bands, extent=extent,
                input_path=gdal_path(layer), sensor=self.parameterAsEnumString(parameters, "SENSOR", context) or "auto",
                polarisation=self.parameterAsString(parameters, "POLARISATION", context) or None,
                model_path=self.parameterAsFile(parameters, "MODEL", context) or None,
                allow_large=self.parameterAsBool(parameters, "ALLOW_LARGE", context))
        except ValueError as error:
            raise QgsProcessingException(str(error)) from error
        for note in notes:
            feedback.pushInfo(note)
        outputs = SegmentOutputs(
            classes=self.parameterAsOutputLayer(parameters, "OUTPUT", context),
            confidence=self.parameterAsOutputLayer(parameters, "OUTPUT_CONFIDENCE", context) or None,
            vector=self.parameterAsOutputLayer(parameters, "OUTPUT_VECTOR", context) or None,
            areas_csv=self.parameterAsFileOutput(parameters, "OUTPUT_AREAS", context) or None,
            simplify=self.parameterAsDouble(parameters, "SIMPLIFY", context),
            min_area_m2=self.parameterAsDouble(parameters, "MIN_AREA", context))
        if gdal_path(layer) is not None:  # a web layer is checked once fetched
            check_request(gdal_path(layer), outputs, options)
        configure_model_store()
        model = self._load_model(parameters, context, feedback, modality)
        source, fetched = gdal_source(layer, extent, resolution, context, feedback)
        if fetched:
            options.extent = None
        try:
            result = segment_raster(model, source, outputs, options, ProcessingFeedbackBridge(feedback))
        except Cancelled:
            raise QgsProcessingException("cancelled: no output was written") from None
        except RasterInputError as error:
            raise QgsProcessingException(str(error)) from error
        finally:
            if fetched:
                remove_quietly(source)
        colors = class_colors(result.class_names)
        self.style_on_load(context, outputs.classes, raster_qml(result.class_names, colors))
        if outputs.vector:
            self.style_on_load(context, outputs.vector, vector_qml(result.class_names, colors))
        return {"OUTPUT": outputs.classes, "OUTPUT_VECTOR": outputs.vector, "OUTPUT_CONFIDENCE": outputs.confidence,
                "OUTPUT_AREAS": outputs.areas_csv, "AREAS": result.areas_json(), "RUNTIME": str(model.runtime)}

    def _load_model(self, parameters, context, feedback, modality):
        from ..core.runtime.bundle import BundleError
        from ..core.runtime.loader import load_model
        from ..core.runtime.sessions import DeviceUnavailable

        path = self.parameterAsFile(parameters, "MODEL", context)
        device = self.parameterAsEnumString(parameters, "DEVICE", context) or "auto"
        backend = self.parameterAsEnumString(parameters, "BACKEND", context) or "auto"
        precision = self.parameterAsEnumString(parameters, "PRECISION", context) or "fp32"
        try:
            model = runtime_import(lambda: load_model(path, modality, backend, device, precision))
        except (BundleError, DeviceUnavailable) as error:
            raise QgsProcessingException(str(error)) from error
        feedback.pushInfo(f"runtime: {model.runtime}")
        if model.runtime.note:
            feedback.pushWarning(f"device: {model.runtime.note}")
        return model


def renderer_bands(layer):
    """The bands the layer shows as red, green, blue, if its renderer is a three-band colour one."""
    renderer = layer.renderer()
    if isinstance(renderer, QgsMultiBandColorRenderer):
        bands = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
        if all(b > 0 for b in bands):
            return bands
    return None


def gdal_path(layer):
    """The file (or GDAL connection string) behind a layer of the gdal provider; None for other providers."""
    if layer.providerType() != "gdal":
        return None
    source = layer.source()
    if "|" in source:
        source = QgsProviderRegistry.instance().decodeUri("gdal", source).get("path") or source
    return source


def gdal_source(layer, extent, resolution, context, feedback):
    """(path, fetched): the layer's own GDAL source, or a temporary GeoTIFF fetched through its data provider."""
    if layer.providerType() == "gdal":
        return gdal_path(layer), False
    provider = layer.dataProvider()
    rectangle = layer.extent()
    if extent is not None:
        from qgis.core import QgsRectangle

        rectangle = QgsRectangle(*extent).intersect(layer.extent())
    if rectangle.isEmpty():
        raise QgsProcessingException("the extent does not overlap the layer")
    if resolution > 0:
        from ..core.gis.geo import pixel_size_metres

        unit_x, unit_y = pixel_size_metres((rectangle.xMinimum(), 1.0, 0.0, rectangle.yMaximum(), 0.0, -1.0),
                                           layer.crs().toWkt(), rectangle.width(), rectangle.height())
        cols = max(1, math.ceil(rectangle.width() * unit_x / resolution))
        rows = max(1, math.ceil(rectangle.height() * unit_y / resolution))
    elif provider.capabilities() & QgsRasterDataProvider.Capability.Size:
        cols = max(1, round(rectangle.width() / layer.rasterUnitsPerPixelX()))
        rows = max(1, round(rectangle.height() / layer.rasterUnitsPerPixelY()))
    else:
        raise QgsProcessingException(f"{layer.name()} is a web layer without a native pixel size: set RESOLUTION "
                                     "(metres) so it can be fetched at that resolution")
    path = os.path.join(QgsProcessingUtils.tempFolder(), f"web-layer-{uuid.uuid4().hex}.tif")
    feedback.pushInfo(f"fetching {layer.name()} ({layer.providerType()}) as a {cols} x {rows} GeoTIFF: {path}")
    pipe = QgsRasterPipe()
    pipe.set(provider.clone())
    writer = QgsRasterFileWriter(path)
    writer.setOutputFormat("GTiff")
    fetching = QgsRasterBlockFeedback()
    feedback.canceled.connect(fetching.cancel)
    error = writer.writeRaster(pipe, cols, rows, rectangle, layer.crs(), context.transformContext(), fetching)
    if feedback.isCanceled():
        remove_quietly(path)
        raise QgsProcessingException("cancelled: no output was written")
    if error != QgsRasterFileWriter.WriterError.NoError:
        remove_quietly(path)
        raise QgsProcessingException(f"could not fetch {layer.name()} through its data provider (error {error}); "
                                     "check the connection, or export the layer to a GeoTIFF first")
    return path, True


def remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
