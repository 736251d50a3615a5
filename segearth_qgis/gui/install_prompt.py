"""The desktop's offer to install a missing runtime: a message-bar item with an Install button, once per profile and
session, raised when an algorithm finds a package missing (possibly in a worker thread)."""

from qgis.core import Qgis
from qgis.PyQt.QtCore import QObject, pyqtSignal, pyqtSlot
from qgis.PyQt.QtWidgets import QPushButton

from ..processing.base import MISSING_RUNTIME_LISTENERS

INSTALLER = "segearth:install_dependencies"


class InstallPrompt(QObject):
    missing = pyqtSignal(str, str)  # profile, message; queued into the GUI thread whatever thread emits it

    def __init__(self, iface):
        super().__init__()
        self.iface = iface
        self.offered = set()
        self.item = None
        self.missing.connect(self.offer)
        self._listener = self.missing.emit
        MISSING_RUNTIME_LISTENERS.append(self._listener)

    @pyqtSlot(str, str)
    def offer(self, profile, message):
        if profile in self.offered:
            return
        self.offered.add(profile)
        bar = self.iface.messageBar()
        self.item = bar.createMessage("SegEarth-OV", message.split(". ")[0] + ".")
        button = QPushButton("Install…", self.item)
        button.setObjectName("segearth_install_dependencies")
        button.clicked.connect(lambda: self.open_installer(profile))
        self.item.layout().addWidget(button)
        bar.pushWidget(self.item, Qgis.MessageLevel.Warning)

    def open_installer(self, profile):
        import processing

        self.close_item()
        processing.execAlgorithmDialog(INSTALLER, {"PROFILE": profile})

    def close_item(self):
        if self.item is not None:
            try:
                self.iface.messageBar().popWidget(self.item)
            except RuntimeError:  # the user closed it: the bar has deleted it already
                pass
            self.item = None

    def unload(self):
        if self._listener in MISSING_RUNTIME_LISTENERS:
            MISSING_RUNTIME_LISTENERS.remove(self._listener)
        self.close_item()
