"""Shared fixtures: seeded tiny models built on the fly, the reference cases in ../shared, the skip policy, and the
markers each test gets from its folder (tests mirror the tree: core/<layer>/, qgis/, desktop/, tools/)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGEARTH_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    from tools.dev.random_model import write_random_checkpoints

    return write_random_checkpoints(tmp_path_factory.mktemp("tiny-model"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoints):
    from segearth_qgis.core import load_model_from_checkpoints

    return load_model_from_checkpoints(**tiny_checkpoints, attention="SegEarth", last_n=1)


@pytest.fixture(scope="session")
def reference_root():
    root = SHARED / "reference"
    if not root.is_dir():
        pytest.skip(f"no reference cases: {root} is absent (it comes with ../shared beside the checkout)")
    return root


FOLDER_MARKERS = {"qgis": ("qgis",), "desktop": ("qgis", "desktop")}
QGIS_FIXTURES = {"qgis_app", "qgis_iface", "segearth_processing"}


def pytest_collection_modifyitems(config, items):
    """Folder markers (tests/qgis: qgis; tests/desktop: qgis, desktop) and ``qgis`` for any test using QGIS's
    application fixtures, so that ``-m "not qgis"`` runs what needs no QGIS."""
    for item in items:
        folder = Path(str(item.path)).relative_to(ROOT / "tests").parts[0]
        names = set(FOLDER_MARKERS.get(folder, ()))
        if QGIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            names.add("qgis")
        for name in sorted(names):
            item.add_marker(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip must say why: an unexplained skip becomes a failure before any reporter sees it."""
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr).strip()
        if reason.startswith("Skipped"):
            reason = reason[len("Skipped"):].lstrip(":").strip()
        if reason in ("", "unconditional skip"):
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid} was skipped without a reason; every skip must print why"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoints, tmp_path_factory):
    """A validated bundle (and its zip) of the tiny model, exported once per test session."""
    from segearth_qgis.core.runtime.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-optical"
    return export_bundle(tiny_checkpoints["clip"], tiny_checkpoints["upsampler"], tiny_checkpoints["arch"], out,
                         quick_gelu=True, make_zip=True)


@pytest.fixture(scope="session")
def tiny_sar_bundle(tiny_checkpoints, tmp_path_factory):
    """The tiny model exported as a SAR bundle with the SAR settings of docs/method.md §3 (GELU, SCLIP on the last 2
    blocks, λ 0.3)."""
    from segearth_qgis.core.runtime.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny-sar"
    return export_bundle(tiny_checkpoints["clip"], tiny_checkpoints["upsampler"], tiny_checkpoints["arch"], out,
                         quick_gelu=False, attention="SCLIP", last_n=2, modality="sar")


_PROVIDERS = []  # the registry does not keep the Python provider objects alive


@pytest.fixture()
def segearth_processing(qgis_app):
    """Processing initialised headless, with the segearth provider registered (again, if a test removed it)."""
    import sys

    from qgis.core import QgsApplication

    if "/usr/share/qgis/python/plugins" not in sys.path:
        sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing

    Processing.initialize()
    registry = QgsApplication.processingRegistry()
    if registry.providerById("segearth") is None:
        from segearth_qgis.processing.provider import SegEarthProvider

        _PROVIDERS.append(SegEarthProvider())
        registry.addProvider(_PROVIDERS[-1])
    return registry.providerById("segearth")


@pytest.fixture(scope="session")
def artefacts():
    """Screenshots and other files a person may want to look at after the run: out/test-artefacts."""
    folder = ROOT / "out" / "test-artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
