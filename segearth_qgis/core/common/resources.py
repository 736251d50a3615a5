"""Finds the plugin's data files both in a checkout (top-level resources/) and in the staged or zipped plugin."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[2]   # segearth_qgis/


def resources_dir() -> Path:
    """``segearth_qgis/resources`` when staged or installed, else the checkout's top-level ``resources``."""
    for candidate in (_PACKAGE / "resources", _PACKAGE.parent / "resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no resources folder beside or inside {_PACKAGE}: the plugin is incomplete, reinstall it")


def resource_path(name: str) -> Path:
    path = resources_dir() / name
    if not path.exists():
        raise FileNotFoundError(f"resource {name!r} is missing from {path.parent}: the plugin is incomplete")
    return path
