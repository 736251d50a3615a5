"""What every SegEarth-OV algorithm shares: naming, feedback relay, runtime errors, and styling loaded outputs."""

import functools
import os
import traceback
from urllib.parse import quote

from qgis.core import (
    QgsApplication,
    QgsNetworkAccessManager,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingUtils,
    QgsProperty,
    QgsRasterLayer,
    QgsSettings,
)
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtNetwork import QNetworkProxy
from qgis.PyQt.QtXml import QDomDocument

from ..compat import ADVANCED, DOUBLE, FILE, INTEGER  # noqa: F401 (DOUBLE, FILE, INTEGER: for the algorithms)
from ..core.common.failures import failure_sentence
from ..core.common.feedback import Feedback
from ..core.common.resources import resource_path

MODEL_DIR_SETTING = "SEGEARTH_MODEL_DIR"  # Options > Processing > Providers > SegEarth-OV > Model folder
MISSING_RUNTIME_LISTENERS = []  # the desktop's install prompt (gui/install_prompt.py) registers here


class SegEarthAlgorithm(QgsProcessingAlgorithm):
    """Base of the provider's algorithms: a subclass declares NAME (its stable id), DISPLAY_NAME, HELP and, outside
    the mapping group, GROUP and GROUP_ID, and defines initAlgorithm and processAlgorithm."""

    NAME = DISPLAY_NAME = HELP = ""
    GROUP, GROUP_ID = "Open-vocabulary mapping", "mapping"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "processAlgorithm" in cls.__dict__:
            cls.processAlgorithm = one_sentence_errors(cls.__dict__["processAlgorithm"])

    def checkParameterValues(self, parameters, context):
        """A raster file that is missing, empty, truncated or not a raster is named with what is wrong (QGIS itself
        reports such a file as 'not found')."""
        problem = input_raster_problem(self, parameters, context)
        if problem:
            return False, problem
        return super().checkParameterValues(parameters, context)

    def createInstance(self):
        return type(self)()

    def name(self):
        return self.NAME

    def displayName(self):
        return self.DISPLAY_NAME

    def shortHelpString(self):
        return self.HELP

    def group(self):
        return self.GROUP

    def groupId(self):
        return self.GROUP_ID

    def icon(self):
        return QIcon(str(resource_path("icon.svg")))

    def style_on_load(self, context, destination, qml):
        """Style ``destination`` with ``qml``, the class style the core writes beside it (gis/style.py, its one
        source), when the dialog, the modeler or an ad hoc run loads it into the project. The text is applied, not
        the file: a raster and a vector output of the same name share one .qml file name."""
        if not context.willLoadLayerOnCompletion(destination):
            return
        context.layerToLoadOnCompletionDetails(destination).setPostProcessor(ClassStyler.create(destination, qml))


def one_sentence_errors(process_algorithm):
    """Wrap an algorithm's processAlgorithm: whatever escapes it reaches the user as one sentence (a
    QgsProcessingException), its traceback in the log at debug level."""

    @functools.wraps(process_algorithm)
    def run(self, parameters, context, feedback):
        try:
            guard_outputs(self, parameters, context)
            return process_algorithm(self, parameters, context, feedback)
        except QgsProcessingException:
            raise
        except Exception as error:  # noqa: BLE001 (the one place an algorithm's failure becomes its sentence)
            if feedback is not None:
                feedback.pushDebugInfo(traceback.format_exc())
            raise QgsProcessingException(failure_sentence(error, "the traceback is in the log at debug level")) \
                from error

    return run


FILE_INPUT_TYPES = ("raster", "vector", "source", "file")


def _file_of(value):
    """The file path a raw parameter value names (``path|layername=...`` included), or None for a loaded layer, a
    layer id, a database or web source."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.staticValue()
    elif isinstance(value, QgsProperty):
        value = value.staticValue()
    if not isinstance(value, str) or not value or value.startswith(("TEMPORARY_OUTPUT", "memory:", "ogr:",
                                                                    "postgres:", "/vsi")):
        return None
    path = value.split("|")[0]
    return path if os.path.isabs(path) or os.sep in path or "/" in path or os.path.splitext(path)[1] else None


def _input_files(algorithm, parameters, context):
    """{parameter name: the files of its input}, for the inputs that are files (a loaded layer by its source)."""
    from ..core.gis.raster import dataset_files

    inputs = {}
    for definition in algorithm.parameterDefinitions():
        name = definition.name()
        unset = parameters.get(name) is None or parameters.get(name) == ""
        if definition.isDestination() or definition.type() not in FILE_INPUT_TYPES or unset:
            continue
        if definition.type() == "file":
            path = algorithm.parameterAsFile(parameters, name, context)
        else:
            read = algorithm.parameterAsRasterLayer if definition.type() == "raster" else \
                algorithm.parameterAsVectorLayer
            layer = read(parameters, name, context)
            path = _file_of(layer.source()) if layer is not None else None
        if path and os.path.isfile(path):
            inputs[name] = dataset_files(path)
    return inputs


def guard_outputs(algorithm, parameters, context):
    """The output-path guard (core/common/outputs.py) for any algorithm: no output onto an input, onto another
    output, or into a folder that cannot be written; before any work."""
    from ..core.common.outputs import check_output_paths

    outputs = {d.name(): _file_of(parameters.get(d.name())) for d in algorithm.parameterDefinitions()
               if d.isDestination()}
    if any(outputs.values()):
        check_output_paths(_input_files(algorithm, parameters, context), outputs)


def input_raster_problem(algorithm, parameters, context):
    """What is wrong with a raster input given as a file path (core's raster_file_problem), or None."""
    from ..core.gis.raster import raster_file_problem

    for definition in algorithm.parameterDefinitions():
        path = _file_of(parameters.get(definition.name())) if definition.type() == "raster" else None
        if path and QgsProcessingUtils.mapLayerFromString(path, context, False) is None:
            problem = raster_file_problem(path)
            if problem:
                return f"{definition.name()}: {problem}"
    return None


def configure_model_store():
    """Apply the provider's Model folder setting (SEGEARTH_MODEL_DIR in the environment still wins)."""
    from ..core.runtime.store import configure_model_store as configure

    configure(QgsSettings().value(f"Processing/Configuration/{MODEL_DIR_SETTING}", "", type=str) or None)


def choice(name, description, options, default=None, optional=False):
    """An enum parameter whose value is the option's text (stable in models and qgis_process), not its index."""
    parameter = QgsProcessingParameterEnum(name, description, options=list(options), defaultValue=default,
                                           optional=optional)
    parameter.setUsesStaticStrings(True)
    return parameter


def bundle_file(name, description):
    """An optional model bundle: its folder's manifest.json, or its .zip."""
    return QgsProcessingParameterFile(name, description, FILE, optional=True,
                                      fileFilter="Model bundles (manifest.json *.zip);;All files (*)")


def advanced(parameter):
    parameter.setFlags(parameter.flags() | ADVANCED)
    return parameter


def runtime_import(function):
    """Run an import-heavy call; a missing package becomes a QgsProcessingException saying how to install it (and,
    in the desktop, the install prompt is offered), a package that is there but fails to import one saying to repair
    it."""
    from ..core.setup.dependencies import broken_runtime_message, missing_runtime_message, profile_for

    try:
        return function()
    except ImportError as error:
        module = missing_module(error)
        if module is None:
            raise QgsProcessingException(broken_runtime_message("a package", error)) from error
        if _importable(module):
            raise QgsProcessingException(broken_runtime_message(module, error)) from error
        message = missing_runtime_message(module)
        for listener in list(MISSING_RUNTIME_LISTENERS):
            listener(profile_for(module), message)
        raise QgsProcessingException(message) from error


def missing_module(error):
    """The top-level module whose absence caused ``error`` (an ImportError, perhaps re-raised with another text)."""
    while error is not None:
        if isinstance(error, ImportError) and error.name:
            return error.name.split(".")[0]
        error = error.__cause__ or error.__context__
    return None


def _importable(module):
    """Whether ``module`` can be found (then its ImportError means a broken install, not a missing one)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def runtime_root():
    """This QGIS profile's runtime folder for the running Python (see core/setup/dependencies.py)."""
    from ..core.setup.dependencies import runtime_root as root

    return root(QgsApplication.qgisSettingsDirPath())


def qgis_proxies():
    """QGIS's proxy (Settings > Options > Network) as urllib proxies; None leaves the environment's in effect."""
    proxy = QgsNetworkAccessManager.instance().fallbackProxy()
    if proxy.type() not in (QNetworkProxy.ProxyType.HttpProxy, QNetworkProxy.ProxyType.HttpCachingProxy) or \
            not proxy.hostName():
        return None
    credentials = f"{quote(proxy.user(), safe='')}:{quote(proxy.password(), safe='')}@" if proxy.user() else ""
    url = f"http://{credentials}{proxy.hostName()}:{proxy.port()}"
    return {"http": url, "https": url}


class ProcessingFeedbackBridge(Feedback):
    """The core's ``Feedback`` on top of a QgsProcessingFeedback."""

    def __init__(self, feedback):
        self.feedback = feedback

    def progress(self, fraction):
        self.feedback.setProgress(100.0 * fraction)

    def cancelled(self):
        return self.feedback.isCanceled()

    def info(self, text):
        self.feedback.pushInfo(text)

    def warn(self, text):
        self.feedback.pushWarning(text)


CLASSIFIED_PROPERTY = "segearth/classified"  # set on loaded outputs: the map action does not offer them as input


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies the class style (QML text) to a loaded output, so the legend shows the class names; a classified
    raster is also marked so the map action does not offer it as an input."""

    _alive = []  # QGIS holds post-processors by a raw pointer: Python must keep them until they have run

    @classmethod
    def create(cls, destination, qml):
        styler = cls(destination, qml)
        cls._alive.append(styler)
        return styler

    def __init__(self, destination, qml):
        super().__init__()
        self.destination = destination
        self.qml = qml

    def postProcessLayer(self, layer, context, feedback):
        document = QDomDocument()
        document.setContent(self.qml)
        loaded, message = layer.importNamedStyle(document)
        if not loaded:
            feedback.pushWarning(f"the class style of {self.destination} could not be applied: {message}")
        if isinstance(layer, QgsRasterLayer):
            layer.setCustomProperty(CLASSIFIED_PROPERTY, True)
        layer.triggerRepaint()
        if self in ClassStyler._alive:
            ClassStyler._alive.remove(self)
