"""The model store: sources, download and export from a local server, offline installs, defaults, plugin reinstalls."""

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from rasters import scene_bands, write_geotiff

from segearth_qgis.core import Vocabulary, segment_image
from segearth_qgis.core.common.feedback import CallbackFeedback
from segearth_qgis.core.runtime.bundle import BundleError, read_manifest
from segearth_qgis.core.runtime.loader import load_model
from segearth_qgis.core.runtime.store import default_bundle, download_model, install_bundle, installed_bundles, sources
from tools.build.environment import ROOT
from tools.build.plugin import stage_plugin
from tools.dev.synthetic import synthetic_scene

VOCAB = Vocabulary.parse("building,roof\nroad\nwater")


@pytest.fixture()
def store(tmp_path, monkeypatch):
    folder = tmp_path / "store"
    monkeypatch.setenv("SEGEARTH_MODEL_DIR", str(folder))
    monkeypatch.setenv("SEGEARTH_CACHE_DIR", str(tmp_path / "cache"))
    return folder


@pytest.fixture()
def weights_server(tiny_checkpoints):
    """Serves the tiny model's checkpoints on 127.0.0.1; the CLIP is redirected with a published SHA-256."""
    files = {"/clip.pt": Path(tiny_checkpoints["clip"]).read_bytes(),
             "/simfeatup.ckpt": Path(tiny_checkpoints["upsampler"]).read_bytes()}
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            if self.path == "/hub/clip.pt":
                self.send_response(302)
                self.send_header("Location", "/clip.pt")
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(files["/clip.pt"]).hexdigest()}"')
                self.end_headers()
                return
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files, requests
    server.shutdown()
    server.server_close()


def _sources_file(path, base, tiny_checkpoints, files, upsampler_sha256=None):
    catalogue = {
        "format": "segearth-ov-model-sources", "format_version": 1,
        "files": {
            "clip": {"filename": "clip.pt", "urls": [f"{base}/missing/clip.pt", f"{base}/hub/clip.pt"], "size": None,
                     "sha256": None, "origin": "the tests' tiny CLIP", "licence": "test data"},
            "upsampler": {"filename": "simfeatup.ckpt", "urls": [f"{base}/simfeatup.ckpt"],
                          "size": len(files["/simfeatup.ckpt"]), "sha256": upsampler_sha256,
                          "origin": "the tests' tiny SimFeatUp", "licence": "test data"}},
        "models": {"optical": {"bundle": "tiny-default", "clip": "clip", "upsampler": "upsampler",
                               "arch": tiny_checkpoints["arch"], "quick_gelu": True, "attention": "SegEarth",
                               "last_n": 1, "gba_lambda": 0.3}}}
    path.write_text(json.dumps(catalogue))
    return path


def test_shipped_sources_name_the_official_files():
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME

    catalogue = sources()
    clip = catalogue["files"][catalogue["models"]["optical"]["clip"]]
    hub = open_clip.get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].rstrip("/")
    assert clip["filename"] == HF_SAFE_WEIGHTS_NAME
    assert clip["urls"][0] == f"https://huggingface.co/{hub}/resolve/main/{HF_SAFE_WEIGHTS_NAME}"
    assert catalogue["files"][catalogue["models"]["optical"]["upsampler"]]["filename"] == \
        "xclip_jbu_one_million_aid.ckpt"
    assert catalogue["files"][catalogue["models"]["sar"]["clip"]]["filename"] == "AlignEarth-SAR-ViT-B-16.pt"
    sar = catalogue["models"]["sar"]
    assert (sar["quick_gelu"], sar["attention"], sar["last_n"]) == (False, "SCLIP", 2)
    assert all(entry["licence"] and entry["origin"] for entry in catalogue["files"].values())


def test_no_default_model_says_how_to_get_one(store):
    with pytest.raises(BundleError) as error:
        default_bundle("optical")
    message = str(error.value)
    assert "models download optical" in message and "models install" in message and "segearth:install_model" in \
        message


def test_download_exports_the_default_bundle_and_records_hashes(store, tmp_path, tiny_checkpoints, weights_server,
                                                                 monkeypatch):
    base, files, requests = weights_server
    pinned = hashlib.sha256(files["/simfeatup.ckpt"]).hexdigest()
    monkeypatch.setenv("SEGEARTH_MODEL_SOURCES",
                       str(_sources_file(tmp_path / "mirror.json", base, tiny_checkpoints, files, pinned)))
    fractions = []
    target = download_model("optical", CallbackFeedback(progress=fractions.append), timeout=10, retries=1)
    assert target == store / "tiny-default" and default_bundle("optical") == target
    assert requests[:2] == ["/missing/clip.pt", "/hub/clip.pt"]  # 404 on the first mirror, then the second
    manifest = read_manifest(target)
    clip, upsampler = manifest["source"]["clip"], manifest["source"]["upsampler"]
    assert (clip["sha256"], clip["sha256_source"]) == (hashlib.sha256(files["/clip.pt"]).hexdigest(), "published")
    assert (upsampler["sha256"], upsampler["sha256_source"]) == (pinned, "pinned")
    assert clip["url"] == f"{base}/hub/clip.pt" and clip["licence"] == "test data"
    assert manifest["torch"]["clip"]  # the checkpoints stay for the torch backend
    assert not list((store / "downloads").glob("*"))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [entry["name"] for entry in installed_bundles() if entry["default"]] == ["tiny-default"]
    scene = synthetic_scene(120, 150, seed=3)
    expected = segment_image(load_model(str(tiny_checkpoints_bundle(tiny_checkpoints, tmp_path)), device="cpu"),
                             scene, VOCAB)
    np.testing.assert_array_equal(segment_image(load_model(None, device="cpu"), scene, VOCAB).labels,
                                  expected.labels)


def tiny_checkpoints_bundle(tiny_checkpoints, tmp_path):
    from segearth_qgis.core.runtime.export import export_bundle

    return export_bundle(tiny_checkpoints["clip"], tiny_checkpoints["upsampler"], tiny_checkpoints["arch"],
                         tmp_path / "direct", keep_checkpoints=False)


def test_a_wrong_pinned_hash_installs_nothing(store, tmp_path, tiny_checkpoints, weights_server, monkeypatch):
    from segearth_qgis.core.common.download import DownloadError

    base, files, _ = weights_server
    monkeypatch.setenv("SEGEARTH_MODEL_SOURCES",
                       str(_sources_file(tmp_path / "mirror.json", base, tiny_checkpoints, files, "0" * 64)))
    with pytest.raises(DownloadError, match="simfeatup.ckpt"):
        download_model("optical", timeout=10, retries=1)
    assert not (store / "tiny-default").exists() and installed_bundles() == []
    assert not (store / "downloads" / "simfeatup.ckpt").exists()


def test_offline_zip_install_becomes_the_default(store, tiny_bundle):
    installed = install_bundle(tiny_bundle.with_suffix(".zip"))
    assert installed == store / "tiny-optical"
    assert default_bundle("optical") == installed
    entries = installed_bundles()
    assert [(e["name"], e["modality"], e["default"]) for e in entries] == [("tiny-optical", "optical", True)]
    assert entries[0]["bytes"] == sum(p.stat().st_size for p in installed.rglob("*") if p.is_file())
    with pytest.raises(FileExistsError):
        install_bundle(tiny_bundle)
    install_bundle(tiny_bundle, overwrite=True, make_default=False)
    assert default_bundle("optical") == installed


def test_the_store_survives_reinstalling_the_plugin(tiny_bundle, tmp_path):
    """Installed through qgis_process with the store in its default place (the user's data folder), then the plugin
    folder is replaced: segearth:segment with an empty MODEL still finds the model."""
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"), QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"))
    env.pop("SEGEARTH_MODEL_DIR", None)
    plugins = tmp_path / "plugins"
    env["QGIS_PLUGINPATH"] = str(plugins)
    stage_plugin(plugins)
    subprocess.run(["qgis_process.bin", "plugins", "enable", "segearth_qgis"], env=env, check=True,
                   capture_output=True, timeout=120)
    install = subprocess.run(["qgis_process.bin", "--json", "run", "segearth:install_model", "--",
                              f"BUNDLE={tiny_bundle.with_suffix('.zip')}"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    store = tmp_path / "data" / "segearth-qgis" / "models"
    assert json.loads(install.stdout)["results"]["MODELS"] == str(store / "tiny-optical")
    shutil.rmtree(plugins / "segearth_qgis")
    stage_plugin(plugins)
    source = write_geotiff(tmp_path / "scene.tif", scene_bands(90, 120, seed=6))
    run = subprocess.run(["qgis_process.bin", "--json", "run", "segearth:segment", "--", f"INPUT={source}",
                          "CLASSES=building,roof\nroad", "DEVICE=cpu", f"OUTPUT={tmp_path / 'classes.tif'}"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tiny-optical" in run.stdout + run.stderr
    assert gdal.Open(str(tmp_path / "classes.tif")).RasterXSize == 120


def test_qgis_proxy_settings_become_urllib_proxies(qgis_app):
    from qgis.core import QgsNetworkAccessManager
    from qgis.PyQt.QtNetwork import QNetworkProxy

    from segearth_qgis.processing.install_model import qgis_proxies

    manager = QgsNetworkAccessManager.instance()
    previous = manager.fallbackProxy()
    try:
        manager.setFallbackProxyAndExcludes(QNetworkProxy(QNetworkProxy.ProxyType.HttpProxy, "proxy.example", 3128,
                                                          "ana", "p@ss"), [], [])
        assert qgis_proxies() == {"http": "http://ana:p%40ss@proxy.example:3128",
                                  "https": "http://ana:p%40ss@proxy.example:3128"}
        manager.setFallbackProxyAndExcludes(QNetworkProxy(QNetworkProxy.ProxyType.NoProxy), [], [])
        assert qgis_proxies() is None
    finally:
        manager.setFallbackProxyAndExcludes(previous, [], [])


def test_models_cli_installs_and_lists(store, tiny_bundle):
    import sys

    env = dict(os.environ, SEGEARTH_MODEL_DIR=str(store))
    install = subprocess.run([sys.executable, "-m", "segearth_qgis.cli", "models", "install",
                              str(tiny_bundle.with_suffix(".zip"))], env=env, capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
    assert install.returncode == 0, install.stderr
    listed = subprocess.run([sys.executable, "-m", "segearth_qgis.cli", "models", "list"], env=env,
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == f"model store: {store}"
    assert lines[1].split()[:2] == ["tiny-optical", "optical"] and lines[1].endswith("(default)")
    again = subprocess.run([sys.executable, "-m", "segearth_qgis.cli", "models", "install", str(tiny_bundle)],
                           env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 1 and "already installed" in again.stderr


def test_the_model_folder_setting_moves_the_store(segearth_processing, tiny_bundle, tmp_path, monkeypatch):
    """Options > Processing > Providers > SegEarth-OV > Model folder: install_model and segment use that folder."""
    import processing
    from processing.core.ProcessingConfig import ProcessingConfig
    from qgis.core import QgsSettings

    from segearth_qgis.core.runtime.store import configure_model_store
    from segearth_qgis.processing.base import MODEL_DIR_SETTING

    monkeypatch.delenv("SEGEARTH_MODEL_DIR", raising=False)
    monkeypatch.setenv("SEGEARTH_CACHE_DIR", str(tmp_path / "cache"))
    assert ProcessingConfig.getSetting(MODEL_DIR_SETTING) is not None  # registered when the provider loaded
    folder = tmp_path / "models-from-setting"
    folder.mkdir()
    key = f"Processing/Configuration/{MODEL_DIR_SETTING}"
    QgsSettings().setValue(key, str(folder))
    try:
        result = processing.run("segearth:install_model", {"BUNDLE": str(tiny_bundle.with_suffix(".zip"))})
        assert result["MODELS"] == str(folder / "tiny-optical")
        source = write_geotiff(tmp_path / "scene.tif", scene_bands(80, 100, seed=2))
        segmented = processing.run("segearth:segment", {"INPUT": source, "CLASSES": "building\nroad", "DEVICE": "cpu",
                                                        "OUTPUT": str(tmp_path / "classes.tif")})
        assert gdal.Open(segmented["OUTPUT"]).RasterXSize == 100
    finally:
        QgsSettings().remove(key)
        configure_model_store(None)
