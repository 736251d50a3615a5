"""common/download.py against a real HTTP server on 127.0.0.1: mirrors, resume, timeouts, redirects, hashes, cancel."""

import hashlib
import random
import socket
import threading
import time
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from segearth_qgis.core.common.download import CHUNK_BYTES, DownloadError, fetch
from segearth_qgis.core.common.feedback import CallbackFeedback, Cancelled

PAYLOAD = random.Random(7).randbytes(2 * CHUNK_BYTES + 54_321)  # two whole chunks and a short one
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
HALF = len(PAYLOAD) // 2  # inside the second chunk
FILE = "/files/weights.bin"
NAME = "weights.bin"

Seen = namedtuple("Seen", "path range user_agent target")


class Host:
    """What the fake server serves, how it misbehaves, and every request it was sent."""

    def __init__(self):
        self.files = {FILE: PAYLOAD}
        self.headers = {}       # path: extra headers on the file's answer
        self.redirects = {}     # path: (location, extra headers on the 302)
        self.failures = {}      # path: statuses answered first, one per request
        self.cut = set()        # paths whose next full answer stops half-way and closes the socket
        self.stall = {}         # path: "headers" (send nothing) or "body" (send one chunk), then wait
        self.ignore_ranges = False
        self.requests = []
        self.release = threading.Event()  # set at teardown: stalled handlers return at once
        self.lock = threading.Lock()
        self.url = None

    def paths(self):
        return [seen.path for seen in self.requests]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a handler whose client vanished still ends

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        host = self.server.host
        path = urlsplit(self.path).path  # a proxied request names the whole URL
        with host.lock:
            host.requests.append(Seen(path, self.headers.get("Range"), self.headers.get("User-Agent"), self.path))
            failure = host.failures[path].pop(0) if host.failures.get(path) else None
            cut = path in host.cut
            host.cut.discard(path)
        stall = host.stall.get(path)
        if stall == "headers":
            host.release.wait(30)
            self.close_connection = True
            return
        if failure:
            self.answer(failure, {"Content-Length": "0"})
            return
        if path in host.redirects:
            location, extra = host.redirects[path]
            self.answer(302, {"Location": location, "Content-Length": "0", **extra})
            return
        body = host.files.get(path)
        if body is None:
            self.answer(404, {"Content-Length": "9"}, b"not found")
            return
        start = self.range_start()
        if start is not None and start >= len(body):
            self.answer(416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"})
            return
        headers = {"Content-Length": str(len(body) - (start or 0)), **host.headers.get(path, {})}
        if start is None:
            self.answer(200, headers)
        else:
            self.answer(206, {**headers, "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})
        try:
            if cut and start is None:
                self.wfile.write(body[:HALF])
                self.connection.shutdown(socket.SHUT_RDWR)
            elif stall == "body":
                self.wfile.write(body[:CHUNK_BYTES])
                host.release.wait(30)
            else:
                self.wfile.write(body[start or 0:])
        except OSError:  # the client went away (cancel, timeout): nothing left to say
            pass
        self.close_connection = True

    def range_start(self):
        value = self.headers.get("Range")
        if self.server.host.ignore_ranges or not value:
            return None
        return int(value.removeprefix("bytes=").split("-")[0])

    def answer(self, status, headers, body=b""):
        self.send_response(status)
        for name, value in headers.items():
            if value is not None:  # None: the header is left out
                self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread: nothing outlives its test


@pytest.fixture(autouse=True)
def no_proxy_from_environment(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture()
def host():
    host = Host()
    server = Server(("127.0.0.1", 0), Handler)
    server.host = host
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield host
    host.release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)
    assert not thread.is_alive()


def names(folder):
    return sorted(path.name for path in folder.iterdir())


def received(fraction):
    """The bytes of PAYLOAD that a reported fraction stands for."""
    return round(fraction * len(PAYLOAD))


def test_download_verified_against_pinned_sha256(host, tmp_path):
    destination = tmp_path / "models" / "optical" / NAME
    calls, lines = [], []
    result = fetch([host.url + FILE], destination, sha256=DIGEST.upper(), size=len(PAYLOAD), backoff=0,
                   feedback=CallbackFeedback(progress=lambda f: calls.append((received(f), len(PAYLOAD))),
                                             log=lines.append))
    assert destination.read_bytes() == PAYLOAD
    assert result == {"path": str(destination), "url": host.url + FILE, "sha256": DIGEST, "size": len(PAYLOAD),
                      "sha256_source": "pinned"}
    assert names(destination.parent) == [NAME]
    assert calls == [(CHUNK_BYTES, len(PAYLOAD)), (2 * CHUNK_BYTES, len(PAYLOAD)), (len(PAYLOAD), len(PAYLOAD))]
    assert [seen.user_agent for seen in host.requests] == ["segearth-qgis"]
    assert lines


def test_hash_published_on_a_redirect_is_checked(host, tmp_path):
    host.redirects["/repo/resolve/main/weights.bin"] = (FILE, {"X-Linked-Etag": f'"{DIGEST}"', "ETag": '"abc"'})
    result = fetch([host.url + "/repo/resolve/main/weights.bin"], tmp_path / NAME, backoff=0)
    assert result["sha256_source"] == "published"
    assert result["sha256"] == DIGEST == hashlib.sha256((tmp_path / NAME).read_bytes()).hexdigest()
    assert host.paths() == ["/repo/resolve/main/weights.bin", FILE]


def test_wrong_published_hash_is_refused(host, tmp_path):
    wrong = hashlib.sha256(b"another file").hexdigest()
    host.redirects["/hf/weights.bin"] = (FILE, {"X-Linked-Etag": f'"{wrong}"'})
    with pytest.raises(DownloadError) as raised:
        fetch([host.url + "/hf/weights.bin"], tmp_path / NAME, backoff=0)
    assert NAME in str(raised.value) and wrong in str(raised.value) and DIGEST in str(raised.value)
    assert names(tmp_path) == []


def test_etag_that_is_not_a_sha256_is_only_recorded(host, tmp_path):
    host.headers[FILE] = {"ETag": 'W/"' + hashlib.md5(PAYLOAD).hexdigest() + '"'}
    result = fetch([host.url + FILE], tmp_path / NAME, backoff=0)
    assert (result["sha256_source"], result["sha256"]) == ("computed", DIGEST)
    assert (tmp_path / NAME).read_bytes() == PAYLOAD


def test_resume_after_the_server_cuts_the_connection(host, tmp_path):
    host.cut.add(FILE)
    lines = []
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, retries=2, backoff=0,
                   feedback=CallbackFeedback(log=lines.append))
    assert [seen.range for seen in host.requests] == [None, f"bytes={HALF}-"]
    assert (tmp_path / NAME).read_bytes() == PAYLOAD
    assert result["sha256"] == DIGEST and result["size"] == len(PAYLOAD)
    assert names(tmp_path) == [NAME]
    assert any(f"resuming at byte {HALF}" in line for line in lines)


def test_partial_kept_after_failure_is_resumed_by_the_next_call(host, tmp_path):
    host.cut.add(FILE)
    with pytest.raises(DownloadError) as raised:
        fetch([host.url + FILE], tmp_path / NAME, retries=1, backoff=0)
    assert f"{HALF} of {len(PAYLOAD)} bytes" in str(raised.value)
    assert names(tmp_path) == [NAME + ".partial"]
    assert (tmp_path / (NAME + ".partial")).read_bytes() == PAYLOAD[:HALF]
    result = fetch([host.url + FILE], tmp_path / NAME, retries=1, backoff=0)
    assert host.requests[-1].range == f"bytes={HALF}-"
    assert result["sha256"] == DIGEST and (tmp_path / NAME).read_bytes() == PAYLOAD
    assert names(tmp_path) == [NAME]


def test_complete_partial_answered_416_is_installed(host, tmp_path):
    (tmp_path / (NAME + ".partial")).write_bytes(PAYLOAD)
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, backoff=0)
    assert [seen.range for seen in host.requests] == [f"bytes={len(PAYLOAD)}-"]
    assert result["sha256"] == DIGEST and (tmp_path / NAME).read_bytes() == PAYLOAD
    assert names(tmp_path) == [NAME]


def test_oversized_partial_answered_416_starts_over(host, tmp_path):
    (tmp_path / (NAME + ".partial")).write_bytes(PAYLOAD + b"stale tail")
    result = fetch([host.url + FILE], tmp_path / NAME, backoff=0)
    assert [seen.range for seen in host.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert result["sha256"] == DIGEST and (tmp_path / NAME).read_bytes() == PAYLOAD


def test_server_that_ignores_ranges_restarts_from_zero(host, tmp_path):
    host.ignore_ranges = True
    (tmp_path / (NAME + ".partial")).write_bytes(b"x" * 1000)
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, backoff=0)
    assert [seen.range for seen in host.requests] == ["bytes=1000-"]
    assert result["sha256"] == DIGEST and (tmp_path / NAME).read_bytes() == PAYLOAD


def test_hash_mismatch_leaves_nothing(host, tmp_path):
    with pytest.raises(DownloadError) as raised:
        fetch([host.url + FILE], tmp_path / NAME, sha256="0" * 64, backoff=0)
    message = str(raised.value)
    assert NAME in message and "0" * 64 in message and DIGEST in message and host.url + FILE in message
    assert names(tmp_path) == []


def test_size_mismatch_leaves_nothing(host, tmp_path):
    with pytest.raises(DownloadError) as raised:
        fetch([host.url + FILE], tmp_path / NAME, size=len(PAYLOAD) + 1, backoff=0)
    assert NAME in str(raised.value) and str(len(PAYLOAD)) in str(raised.value)
    assert str(len(PAYLOAD) + 1) in str(raised.value)
    assert names(tmp_path) == []


def test_404_on_first_mirror_falls_back_to_the_second(host, tmp_path):
    mirrors = [host.url + "/gone/weights.bin", host.url + FILE]
    result = fetch(mirrors, tmp_path / NAME, sha256=DIGEST, retries=3, backoff=0)
    assert result["url"] == host.url + FILE
    assert host.paths() == ["/gone/weights.bin", FILE]  # a 404 is not retried
    assert (tmp_path / NAME).read_bytes() == PAYLOAD


def test_404_on_every_mirror(host, tmp_path):
    mirrors = [host.url + "/a/weights.bin", host.url + "/b/weights.bin"]
    with pytest.raises(DownloadError) as raised:
        fetch(mirrors, tmp_path / NAME, retries=3, backoff=0)
    message = str(raised.value)
    assert NAME in message and "HTTP 404" in message and all(url in message for url in mirrors)
    assert "by hand" in message
    assert host.paths() == ["/a/weights.bin", "/b/weights.bin"]
    assert names(tmp_path) == []


def test_server_errors_and_429_are_retried(host, tmp_path):
    host.failures[FILE] = [503, 429]
    lines = []
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, retries=3, backoff=0,
                   feedback=CallbackFeedback(log=lines.append))
    assert host.paths() == [FILE] * 3
    assert result["sha256"] == DIGEST
    assert any("HTTP 503" in line for line in lines) and any("HTTP 429" in line for line in lines)


def test_retries_are_bounded(host, tmp_path):
    host.failures[FILE] = [500] * 5
    with pytest.raises(DownloadError, match="HTTP 500"):
        fetch([host.url + FILE], tmp_path / NAME, retries=2, backoff=0)
    assert host.paths() == [FILE] * 2


@pytest.mark.parametrize("stall", ["headers", "body"])
def test_stalled_server_times_out(host, tmp_path, stall):
    host.stall[FILE] = stall
    began = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out after 0\.5 s"):
        fetch([host.url + FILE], tmp_path / NAME, timeout=0.5, retries=1, backoff=0)
    assert time.monotonic() - began < 10
    assert not (tmp_path / NAME).exists()
    if stall == "body":  # what arrived before the stall is kept for the next call
        kept = (tmp_path / (NAME + ".partial")).read_bytes()
        assert kept and PAYLOAD.startswith(kept)


def test_unknown_size_reports_progress_once_complete(host, tmp_path):
    host.headers[FILE] = {"Content-Length": None}  # the body ends when the server closes the connection
    seen = []
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, backoff=0,
                   feedback=CallbackFeedback(progress=seen.append))
    assert result["size"] == len(PAYLOAD) and (tmp_path / NAME).read_bytes() == PAYLOAD
    assert seen == [1.0]


def test_cancel_after_the_first_chunk(host, tmp_path):
    calls = []
    with pytest.raises(Cancelled):
        fetch([host.url + FILE], tmp_path / NAME, backoff=0,
              feedback=CallbackFeedback(progress=lambda f: calls.append(received(f)), cancelled=lambda: bool(calls)))
    assert calls == [CHUNK_BYTES]
    assert names(tmp_path) == []


def test_existing_destination_with_matching_hash_needs_no_request(host, tmp_path):
    (tmp_path / NAME).write_bytes(PAYLOAD)
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, size=len(PAYLOAD))
    assert result["sha256_source"] == "pinned" and result["sha256"] == DIGEST
    assert host.requests == []


def test_existing_destination_with_other_content_is_downloaded_again(host, tmp_path):
    (tmp_path / NAME).write_bytes(b"an older file")
    result = fetch([host.url + FILE], tmp_path / NAME, sha256=DIGEST, backoff=0)
    assert result["url"] == host.url + FILE and (tmp_path / NAME).read_bytes() == PAYLOAD
    assert host.paths() == [FILE]
    assert names(tmp_path) == [NAME]


def test_proxies_dict_routes_through_the_proxy(host, tmp_path):
    url = "http://weights.invalid" + FILE  # never resolved: only the proxy is contacted
    result = fetch([url], tmp_path / NAME, sha256=DIGEST, proxies={"http": host.url}, backoff=0)
    assert result["url"] == url and (tmp_path / NAME).read_bytes() == PAYLOAD
    assert [seen.target for seen in host.requests] == [url]
