"""The plugin object QGIS keeps: the Processing provider (desktop and qgis_process) and the desktop map action."""

from qgis.core import QgsApplication


class SegEarthPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.map_action = None

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
        if self.map_action is None:
            from .map_action import MapClassesAction

            self.map_action = MapClassesAction(self.iface)

    def unload(self):
        if self.map_action is not None:
            self.map_action.unload()
            self.map_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
