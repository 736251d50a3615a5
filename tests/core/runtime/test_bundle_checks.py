"""Bundle checks: zips unpacked only when every member matches the manifest, concurrency, bad-bundle sentences."""

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import time
import zipfile

import pytest

from segearth_qgis.core.runtime.bundle import BundleError, resolve_bundle, verify_bundle
from segearth_qgis.core.runtime.loader import load_bundle

CHOOSE_ZIP = "choose a bundle's zip as exported or downloaded"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SEGEARTH_CACHE_DIR", str(folder))
    return folder


def _left_in(cache):
    """Whatever an unpacking left in the cache: files, and hidden (staging) folders."""
    return [p for p in cache.rglob("*") if p.is_file() or p.name.startswith(".")] if cache.exists() else []


def _manifest(tiny_bundle, **extra_files):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    manifest["files"].update(extra_files)
    return manifest


def _entry(data):
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _zip(path, manifest, members=()):
    """A zip of ``bundle/manifest.json`` and ``members``: (name or ZipInfo, bytes) pairs."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bundle/manifest.json", json.dumps(manifest))
        for name, data in members:
            archive.writestr(name, data)
    return path


def _refused(path, *phrases):
    with pytest.raises(BundleError) as error:
        resolve_bundle(path)
    message = str(error.value)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message
    return message


def test_a_zip_bomb_is_refused_before_anything_is_written(tiny_bundle, tmp_path, cache):
    zeros = 512 << 20
    manifest = _manifest(tiny_bundle, **{"zeros.bin": {"sha256": hashlib.sha256(bytes(zeros)).hexdigest(),
                                                      "bytes": zeros}})
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bundle/manifest.json", json.dumps(manifest))
        with archive.open("bundle/zeros.bin", "w", force_zip64=True) as member:
            for _ in range(zeros >> 20):
                member.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 << 20
    _refused(bomb, "zip bomb", "would inflate to 512 MiB", CHOOSE_ZIP)
    assert not cache.exists()


def test_a_manifest_claiming_too_much_is_refused(tiny_bundle, tmp_path, cache):
    manifest = _manifest(tiny_bundle, **{"huge.bin": {"sha256": "0" * 64, "bytes": 9 << 30}})
    _refused(_zip(tmp_path / "huge.zip", manifest), "more than a bundle holds", CHOOSE_ZIP)
    assert not cache.exists()


def _symlink(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("member, phrase", [
    ("../evil.txt", "would land outside the bundle's folder"),
    ("bundle/../../evil.txt", "would land outside the bundle's folder"),
    ("/tmp/evil.txt", "would land outside the bundle's folder"),
    ("C:/evil.txt", "would land outside the bundle's folder"),
    ("bundle/extra.txt", "that its manifest.json does not list"),
    ("other/visual_encoder.onnx", "that its manifest.json does not list"),
    (_symlink("bundle/evil-link"), "symbolic link"),
])
def test_unsafe_or_unlisted_members_are_refused(tiny_bundle, tmp_path, cache, member, phrase):
    path = _zip(tmp_path / "bad.zip", _manifest(tiny_bundle), [(member, b"evil")])
    _refused(path, phrase, CHOOSE_ZIP)
    assert not (tmp_path / "evil.txt").exists() and not cache.exists()


def test_a_member_of_another_size_is_refused(tiny_bundle, tmp_path, cache):
    listed = _manifest(tiny_bundle)["files"]["visual_encoder.onnx"]["bytes"]
    path = _zip(tmp_path / "resized.zip", _manifest(tiny_bundle), [("bundle/visual_encoder.onnx", b"short")])
    _refused(path, f"bundle/visual_encoder.onnx unpacks to 5 bytes but its manifest.json lists {listed}", CHOOSE_ZIP)
    assert not cache.exists()


def test_a_member_whose_header_lies_is_refused_and_nothing_is_left(tiny_bundle, tmp_path, cache):
    data = bytes(1 << 20)
    claimed = 1000
    manifest = _manifest(tiny_bundle, **{"zeros.bin": {"sha256": hashlib.sha256(data[:claimed]).hexdigest(),
                                                      "bytes": claimed}})
    path = _zip(tmp_path / "liar.zip", manifest, [("bundle/zeros.bin", data)])
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("bundle/zeros.bin")
    raw = bytearray(path.read_bytes())
    raw[info.header_offset + 22:info.header_offset + 26] = struct.pack("<I", claimed)  # local header
    central = raw.rindex(b"PK\x01\x02")  # the last central record is zeros.bin's
    raw[central + 24:central + 28] = struct.pack("<I", claimed)
    path.write_bytes(bytes(raw))
    _refused(path, "cannot be unpacked", "download or copy it again")
    assert _left_in(cache) == []


def test_an_interrupted_unpacking_leaves_nothing(tiny_bundle, cache, monkeypatch):
    from segearth_qgis.core.runtime import bundle

    def interrupt(staging, target):
        assert (staging / "manifest.json").is_file()  # every member was written
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle, "_publish", interrupt)
    with pytest.raises(KeyboardInterrupt):
        resolve_bundle(tiny_bundle.with_suffix(".zip"))
    assert _left_in(cache) == []


def test_two_processes_unpack_one_zip(tiny_bundle, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "SEGEARTH_CACHE_DIR": str(cache)}
    start = time.time() + 3  # both import first, then resolve at the same moment
    script = f"""
import time
from segearth_qgis.core.runtime.bundle import resolve_bundle
time.sleep(max(0.0, {start} - time.time()))
print(resolve_bundle({str(tiny_bundle.with_suffix('.zip'))!r}))
"""
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    folders = {out.strip() for out, _ in outputs}
    assert len(folders) == 1
    folder = folders.pop()
    assert verify_bundle(folder)["modality"] == "optical"
    assert [p.name for p in (cache / "bundles").iterdir()] == [os.path.basename(folder)]
    assert [p for p in cache.rglob(".*")] == []


def test_a_file_that_is_no_bundle_is_named(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    _refused(notes, "is neither a bundle folder nor a bundle zip", "choose a bundle's manifest.json or its .zip")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 cut short")
    _refused(broken, "is not a readable zip", "download or copy it again")
    _refused(tmp_path / "absent.zip", "does not exist", "choose a bundle's manifest.json or its .zip")


def _with(manifest, **changes):
    return {**manifest, **changes}


def _without(manifest, key):
    return {k: v for k, v in manifest.items() if k != key}


@pytest.mark.parametrize("case, phrase", [
    ("list", "is not a SegEarth-OV bundle manifest: choose the manifest.json of a bundle exported by this plugin"),
    ("no files", "lacks files"),
    ("no modality", "lacks modality"),
    ("no patch_size", "lacks patch_size"),
    ("modality thermal", "has modality 'thermal', not one of optical, sar"),
    ("files a list", '"files" must map'),
    ("entry without sha256", '"files" must map'),
    ("entry bytes text", '"files" must map'),
    ("entry outside", '"files" must map'),
    ("no text encoder", "does not list text_encoder.onnx"),
    ("format_version text", "has format_version '1', not a number"),
])
def test_a_manifest_of_the_wrong_shape_is_named(tiny_bundle, tmp_path, case, phrase):
    good = _manifest(tiny_bundle)
    entry = good["files"]["visual_encoder.onnx"]
    manifest = {
        "list": [good],
        "no files": _without(good, "files"),
        "no modality": _without(good, "modality"),
        "no patch_size": _without(good, "patch_size"),
        "modality thermal": _with(good, modality="thermal"),
        "files a list": _with(good, files=list(good["files"])),
        "entry without sha256": _with(good, files={**good["files"], "visual_encoder.onnx": {"bytes": 3}}),
        "entry bytes text": _with(good, files={**good["files"], "visual_encoder.onnx": {**entry, "bytes": "3"}}),
        "entry outside": _with(good, files={**good["files"], "../visual_encoder.onnx": entry}),
        "no text encoder": _with(good, files=_without(good["files"], "text_encoder.onnx")),
        "format_version text": _with(good, format_version="1"),
    }[case]
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as error:
        load_bundle(folder)
    assert str(folder / "manifest.json") in str(error.value) and phrase in str(error.value)
    if case != "list":
        assert str(error.value).endswith("the bundle is damaged: copy or download it again")


def test_a_manifest_that_is_not_utf8_is_named(tiny_bundle, tmp_path, cache):
    folder = tmp_path / "latin"
    folder.mkdir()
    text = (tiny_bundle / "manifest.json").read_text().replace("a bad photo", "a bad phöto")
    (folder / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError) as error:
        load_bundle(folder)
    assert str(folder / "manifest.json") in str(error.value)
    assert "is not UTF-8 text" in str(error.value) and "copy or download it again" in str(error.value)
    path = tmp_path / "latin.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(folder / "manifest.json", "latin/manifest.json")
    _refused(path, "latin/manifest.json is not UTF-8 text", "copy or download it again")
    assert not cache.exists()


def test_an_onnx_file_damaged_before_hashing_is_named(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "rehashed")
    damaged = copy / "text_encoder.onnx"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["text_encoder.onnx"] = _entry(damaged.read_bytes())
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert verify_bundle(copy)["modality"] == "optical"  # the hashes match: only onnxruntime can tell
    for device in ("cpu", "auto"):
        with pytest.raises(BundleError) as error:
            load_bundle(copy, backend="onnx", device=device)
        message = str(error.value)
        assert message.startswith("bundle rehashed: text_encoder.onnx cannot be loaded by onnxruntime (")
        assert message.endswith("the bundle is damaged; download or export it again")
