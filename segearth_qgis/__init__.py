"""SegEarth-OV for QGIS, open-vocabulary land-cover mapping; QGIS loads it through ``classFactory``, kept light."""


def classFactory(iface):
    from .plugin import SegEarthPlugin

    return SegEarthPlugin(iface)
