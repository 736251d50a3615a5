"""``segearth:install_model``: download the official weights into default bundles, or install a bundle offline."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
)

from ..core.common.choices import MODEL_SOURCES
from .base import (
    ProcessingFeedbackBridge,
    SegEarthAlgorithm,
    bundle_file,
    choice,
    configure_model_store,
    qgis_proxies,
    runtime_import,
)


class InstallModelAlgorithm(SegEarthAlgorithm):
    NAME = "install_model"
    DISPLAY_NAME = "Install a model"
    HELP = ("Installs the models that <i>Map classes</i> uses when MODEL is empty.<br><b>With internet:</b> "
            "SOURCE <i>optical</i> downloads OpenAI CLIP ViT-B/16 and the SimFeatUp upsampler, <i>sar</i> the "
            "AlignEarth SAR encoder (and the upsampler), <i>all</i> both; each file's origin and licence are "
            "logged, its SHA-256 is checked (or recorded), interrupted downloads resume, and the weights are "
            "exported into a model bundle (this needs torch and open_clip). QGIS's proxy settings are used."
            "<br><b>Offline:</b> give BUNDLE, a bundle folder's manifest.json or its .zip made on a connected "
            "machine; it is verified and copied into the model folder.<br>The model folder is outside the "
            "plugin, so upgrading the plugin keeps the models; the provider's Model folder setting (Options > "
            "Processing > Providers) or SEGEARTH_MODEL_DIR moves it.")

    def initAlgorithm(self, config=None):
        self.addParameter(choice("SOURCE", "Download", MODEL_SOURCES, "optical"))
        self.addParameter(bundle_file("BUNDLE", "Or install this bundle (offline)"))
        self.addParameter(QgsProcessingParameterBoolean("MAKE_DEFAULT", "Make it the default model of its modality",
                                                        True))
        self.addOutput(QgsProcessingOutputString("MODELS", "Installed bundle folders (one per line)"))

    def processAlgorithm(self, parameters, context, feedback):
        from ..core.common.download import DownloadError
        from ..core.common.feedback import Cancelled
        from ..core.runtime.bundle import BundleError
        from ..core.runtime.store import download_model, install_bundle

        configure_model_store()
        bundle = self.parameterAsFile(parameters, "BUNDLE", context)
        bridge = ProcessingFeedbackBridge(feedback)
        installed = []
        try:
            if bundle:
                installed.append(install_bundle(bundle, self.parameterAsBool(parameters, "MAKE_DEFAULT", context),
                                                feedback=bridge))
            else:
                which = self.parameterAsEnumString(parameters, "SOURCE", context)
                for modality in ("optical", "sar") if which == "all" else (which,):
                    installed.append(runtime_import(lambda modality=modality: download_model(
                        modality, feedback=bridge, proxies=qgis_proxies())))
        except Cancelled:
            raise QgsProcessingException("cancelled: nothing was installed (a new run starts the download again)"
                                         ) from None
        except (BundleError, DownloadError, FileExistsError, ValueError) as error:
            raise QgsProcessingException(str(error)) from error
        return {"MODELS": "\n".join(str(path) for path in installed)}
