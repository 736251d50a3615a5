"""The plugin object QGIS keeps: it registers the Processing provider, in the desktop and in qgis_process alike."""

from qgis.core import QgsApplication


class SegEarthPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        """Called by qgis_process (which never calls initGui) and, through initGui, by the desktop: registers once."""
        if self.provider is not None:
            return
        from .processing.provider import SegEarthProvider

        provider = SegEarthProvider()
        if QgsApplication.processingRegistry().addProvider(provider):
            self.provider = provider

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
