"""``segearth:install_dependencies``: puts onnxruntime (and, for the full profile, torch and open_clip) where the plugin
finds them, with QGIS's own Python, online or from a wheel folder; also repairs, uninstalls and reports."""

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputFolder,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterString,
)

from ..compat import FILE, FOLDER
from ..core.common.choices import GPU_PACKAGES, INSTALL_ACTIONS, PROFILES
from .base import ProcessingFeedbackBridge, SegEarthAlgorithm, advanced, choice, qgis_proxies, runtime_root


class InstallDependenciesAlgorithm(SegEarthAlgorithm):
    NAME = "install_dependencies"
    DISPLAY_NAME = "Install dependencies"
    HELP = ("Installs the Python packages SegEarth-OV needs into QGIS's own Python, with pip, in a folder of "
            "this QGIS profile outside the plugin (upgrading or reinstalling the plugin keeps it).<br>"
            "<b>PROFILE</b> <i>onnx</i> (enough to map with model bundles): onnxruntime, as onnxruntime-gpu "
            "with the CUDA 13 and cuDNN wheels where an NVIDIA GPU and a driver for CUDA 13 (580 or newer) are "
            "found, else the CPU package (the log says why). <i>full</i> adds torch and open_clip (torch "
            "backend, downloads of the official weights, SAR training).<br>QGIS's numpy, GDAL and everything "
            "QGIS has loaded keep their versions: pip resolves against them and installs only what is missing. "
            "The new packages are imported in a separate Python before they are switched on, so a failed or "
            "cancelled install leaves the previous one working.<br><b>Offline:</b> WHEELS, a folder of wheels "
            "or WHEELS_ZIP, a .zip of them, made on a connected machine with the pip download command in the "
            "README.<br><b>ACTION</b> <i>repair</i> reinstalls the installed profile from scratch, "
            "<i>uninstall</i> removes the folder, <i>status</i> only reports. QGIS's proxy settings are used.")
    GROUP = "Set-up"
    GROUP_ID = "setup"

    def initAlgorithm(self, config=None):
        for name, label, options, default in (("ACTION", "Action", INSTALL_ACTIONS, "install"),
                                              ("PROFILE", "Profile", PROFILES, "onnx"),
                                              ("GPU", "GPU package", GPU_PACKAGES, "auto")):
            self.addParameter(choice(name, label, options, default))
        self.addParameter(QgsProcessingParameterFile("WHEELS", "Offline: a folder of wheels", FOLDER, optional=True))
        self.addParameter(QgsProcessingParameterFile("WHEELS_ZIP", "Offline: a .zip of wheels", FILE, extension="zip",
                                                     optional=True))
        self.addParameter(advanced(QgsProcessingParameterString("INDEX_URL", "Package index (empty: pip's own "
                                                                "configuration)", optional=True)))
        self.addOutput(QgsProcessingOutputFolder("RUNTIME_DIR", "Runtime folder"))
        self.addOutput(QgsProcessingOutputString("STATUS", "Installed packages"))
        self.addOutput(QgsProcessingOutputBoolean("RESTART_NEEDED", "QGIS must restart to use them"))

    def processAlgorithm(self, parameters, context, feedback):
        from ..core.common.feedback import Cancelled
        from ..core.setup.dependencies import active_site, detect, read_state
        from ..core.setup.installer import InstallError, install, uninstall

        action = self.parameterAsEnumString(parameters, "ACTION", context)
        wheels = self.parameterAsFile(parameters, "WHEELS", context) or \
            self.parameterAsFile(parameters, "WHEELS_ZIP", context) or None
        root = runtime_root()
        state = read_state(root)
        profile = self.parameterAsEnumString(parameters, "PROFILE", context)
        if action == "repair" and state.get("profile"):
            profile = state["profile"]  # a repair keeps what is installed; install changes the profile
        bridge = ProcessingFeedbackBridge(feedback)
        restart = False
        try:
            if action in ("install", "repair"):
                result = install(root, profile, self.parameterAsEnumString(parameters, "GPU", context), wheels,
                                 self.parameterAsString(parameters, "INDEX_URL", context) or None, qgis_proxies(),
                                 bridge)
                restart = result.restart_needed
                feedback.pushInfo(f"installed the {profile} profile into {result.folder}")
            elif action == "uninstall":
                restart = uninstall(root, bridge).restart_needed
        except Cancelled as error:
            raise QgsProcessingException(str(error)) from None
        except (InstallError, OSError) as error:
            raise QgsProcessingException(str(error)) from error
        if restart:
            feedback.pushWarning("this QGIS has already loaded modules of the previous runtime: restart QGIS to "
                                 + ("unload them" if action == "uninstall" else "use the new ones"))
        status = detect(active=active_site(root)).summary()
        feedback.pushInfo(f"runtime folder: {root}")
        feedback.pushInfo(f"now importable: {status}")
        return {"RUNTIME_DIR": str(root), "STATUS": status, "RESTART_NEEDED": restart}

