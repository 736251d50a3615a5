"""The plugin object QGIS keeps: the Processing provider (desktop and qgis_process) and the desktop map action."""

from qgis.core import QgsApplication


class SegEarthPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.map_action = None
        self.install_prompt = None

    def initProcessing(self):
        """Called by qgis_process (which never calls initGui) and, through initGui, by the desktop: puts the
        installed runtime on sys.path (a file read, no import) and registers the provider, once."""
        if self.provider is not None:
            return
        from .core.setup.dependencies import activate
        from .processing.provider import SegEarthProvider

        activate(QgsApplication.qgisSettingsDirPath())

        provider = SegEarthProvider()
        if QgsApplication.processingRegistry().addProvider(provider):
            self.provider = provider

    def initGui(self):
        self.initProcessing()
        if self.map_action is None:
            from .gui.map_action import MapClassesAction

            self.map_action = MapClassesAction(self.iface)
        if self.install_prompt is None:
            from .gui.install_prompt import InstallPrompt

            self.install_prompt = InstallPrompt(self.iface)

    def unload(self):
        if self.install_prompt is not None:
            self.install_prompt.unload()
            self.install_prompt = None
        if self.map_action is not None:
            self.map_action.unload()
            self.map_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
