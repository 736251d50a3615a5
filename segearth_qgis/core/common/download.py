"""The one downloader for model weights: mirrors, resume, timeouts, retries, proxies and SHA-256 checks, stdlib only."""

import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from email.message import Message
from pathlib import Path

from .failures import ActionableError
from .feedback import Cancelled, Feedback, as_feedback
from .files import sha256_digest

CHUNK_BYTES = 1024 * 1024
USER_AGENT = "segearth-qgis"
PARTIAL_SUFFIX = ".partial"
HASH_HEADERS = ("X-Linked-Etag", "ETag")  # Hugging Face sends the LFS file's SHA-256 in these, quoted
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


class DownloadError(ActionableError, RuntimeError):
    """A download failed; the message names the file, the URL(s) tried and what to do."""


class _AttemptFailed(Exception):
    """One attempt at one URL failed for a reason found here, not raised by urllib."""

    def __init__(self, reason: str, retry: bool) -> None:
        super().__init__(reason)
        self.retry = retry


class _RedirectHeaders(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, showing each redirect response's headers to `note` first."""

    def __init__(self, note: Callable[[Message], None]) -> None:
        self.note = note

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str, headers: Message,
                         newurl: str) -> urllib.request.Request | None:
        self.note(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(urls: str | Iterable[str], destination: str | os.PathLike, sha256: str | None = None,
          size: int | None = None, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0,
          proxies: dict | None = None, feedback: Feedback | None = None) -> dict:
    """Download the first URL of `urls` (mirrors, tried in order) that works into `destination`; returns a dict
    {"path": str, "url": the URL that served it, "sha256": hex digest, "size": bytes,
     "sha256_source": "pinned" | "published" | "computed"}.

    Bytes go to `destination + ".partial"`, which a later attempt or call resumes; `destination` appears only once
    the file has the expected size and hash. An existing `destination` that matches `sha256` and `size` (those
    given) is returned without network ("url" None). `proxies` None uses the environment's http(s)_proxy/no_proxy;
    a dict such as {"https": "http://host:3128"} replaces them. `feedback` gets the fraction received after each
    chunk (once at the end when the size is unknown), one info line per attempt, failure and resume, and is asked
    between chunks whether to stop (then `Cancelled` is raised and the partial removed).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    destination = Path(destination)
    if not urls:
        raise DownloadError(f"No URL given to download {destination.name} from.")
    pinned = sha256.lower() if sha256 else None
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"Cannot create the folder for {destination.name}: {error}") from error
    download = _Download(destination, size, timeout, proxies, as_feedback(feedback))
    try:
        if destination.is_file():
            found = download.existing(pinned)
            if found:
                return found
        url, digest, received = download.first_working(urls, retries, backoff)
    except Cancelled:
        download.partial.unlink(missing_ok=True)
        raise
    return download.install(url, digest, received, pinned)


class _Download:
    """One call of `fetch`: its opener, its partial file and the hash a host published, if any."""

    def __init__(self, destination: Path, size: int | None, timeout: float, proxies: dict | None,
                 feedback: Feedback) -> None:
        self.destination = destination
        self.name = destination.name
        self.partial = destination.with_name(destination.name + PARTIAL_SUFFIX)
        self.size = size
        self.timeout = timeout
        self.feedback = feedback
        self.say = feedback.info
        self.published = None
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler(proxies),
                                                  _RedirectHeaders(self.note_published))

    def note_published(self, headers: Message) -> None:
        """Keep the first SHA-256 a response publishes (a redirect's comes before the CDN response's)."""
        if self.published is None:
            self.published = _published_sha256(headers)

    def check_cancelled(self) -> None:
        if self.feedback.cancelled():
            raise Cancelled(f"download of {self.name} cancelled")

    def existing(self, pinned: str | None) -> dict | None:
        """The result for a `destination` already in place, or None when it must be downloaded again."""
        found_size = self.destination.stat().st_size
        digest = sha256_digest(self.destination, self.check_cancelled).hexdigest()
        if (pinned is None or digest == pinned) and (self.size is None or found_size == self.size):
            return {"path": str(self.destination), "url": None, "sha256": digest, "size": found_size,
                    "sha256_source": "pinned" if pinned else "computed"}
        self.say(f"{self.name}: the existing file does not match the expected SHA-256 or size; downloading it again")
        return None

    def first_working(self, urls: list[str], retries: int, backoff: float) -> tuple[str, str, int]:
        """(url, hex digest, size) from the first URL that delivers the whole file, else DownloadError."""
        attempts = max(1, retries)
        failures = []
        for url in urls:
            for attempt in range(attempts):
                if attempt:
                    self.wait(backoff * 2 ** (attempt - 1))
                self.say(f"{self.name}: attempt {attempt + 1} of {attempts} from {url}")
                try:
                    digest, received = self.stream(url)
                    return url, digest, received
                except (OSError, http.client.HTTPException, _AttemptFailed) as error:
                    reason, retry = _describe(error, self.timeout)
                self.say(f"{self.name}: {url} failed: {reason}")
                if not retry:
                    break
            failures.append((url, reason))
        tried = "\n".join(f"  {url}: {reason}" for url, reason in failures)
        kept = f" The {self.partial.name} kept so far will be resumed." if self.partial.exists() else ""
        raise DownloadError(f"Could not download {self.name}. Tried:\n{tried}\nCheck the network connection and the "
                            f"proxy settings, then try again.{kept} Or download the file by hand from one of these "
                            f"URLs and install it offline as {self.destination}.")

    def wait(self, seconds: float) -> None:
        """Sleep between attempts, still answering a cancel within a tenth of a second."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check_cancelled()
            time.sleep(min(left, 0.1))

    def stream(self, url: str) -> tuple[str, int]:
        """One attempt: resume or start the partial from `url`; (hex digest, size) once the server sent it all."""
        offset = self.partial.stat().st_size if self.partial.exists() else 0
        if self.size is not None and offset > self.size:
            self.say(f"{self.name}: the partial file is larger than the expected {self.size} bytes; starting over")
            self.partial.unlink()
            offset = 0
        headers = {"User-Agent": USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            self.say(f"{self.name}: resuming at byte {offset}")
        try:
            request = urllib.request.Request(url, headers=headers)
        except ValueError as error:
            raise _AttemptFailed(f"not a valid URL ({error})", retry=False) from error
        try:
            response = self.opener.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code == 416 and offset:
                return self.range_not_satisfiable(url, offset, error.headers)
            raise
        with response:
            self.note_published(response.headers)
            length = _integer(response.headers.get("Content-Length"))
            if response.status == 206:
                start, total = _content_range(response.headers)
                if start != offset:
                    self.partial.unlink(missing_ok=True)
                    raise _AttemptFailed(f"the server resumed at byte {start}, not {offset}; starting over",
                                         retry=True)
                digest = sha256_digest(self.partial, self.check_cancelled) if offset else hashlib.sha256()
                mode = "ab" if offset else "wb"
            else:
                if offset:
                    self.say(f"{self.name}: the server does not resume downloads; starting over")
                offset, total, digest, mode = 0, length, hashlib.sha256(), "wb"
            if total is None and length is not None:
                total = offset + length
            done = self.receive(response, mode, digest, offset, self.size if self.size is not None else total)
        if length is not None and done - offset < length:
            raise _AttemptFailed(f"connection cut after {done - offset} of {length} bytes", retry=True)
        return digest.hexdigest(), done

    def receive(self, response: http.client.HTTPResponse, mode: str, digest: "hashlib._Hash", done: int,
                total: int | None) -> int:
        """Append the response body to the partial chunk by chunk; the byte count reached."""
        try:
            out = open(self.partial, mode)
        except OSError as error:
            raise DownloadError(f"Cannot write {self.partial}: {error}") from error
        with out:
            while True:
                self.check_cancelled()
                chunk = response.read(CHUNK_BYTES)
                if not chunk:
                    break
                digest.update(chunk)
                try:
                    out.write(chunk)
                except OSError as error:
                    raise DownloadError(f"Cannot write {self.partial} (free some disk space?): {error}") from error
                done += len(chunk)
                if total:
                    self.feedback.progress(min(done / total, 1.0))
            out.flush()
            os.fsync(out.fileno())
        if not total:
            self.feedback.progress(1.0)
        return done

    def range_not_satisfiable(self, url: str, offset: int, headers: Message) -> tuple[str, int]:
        """A 416 to our Range: the partial is whole if it has the expected size, else it is dropped and refetched."""
        self.note_published(headers)
        expected = self.size if self.size is not None else _content_range(headers)[1]
        if expected == offset:
            self.say(f"{self.name}: the partial file is already complete ({offset} bytes)")
            return sha256_digest(self.partial, self.check_cancelled).hexdigest(), offset
        self.say(f"{self.name}: the server cannot resume at byte {offset}; starting over")
        self.partial.unlink()
        return self.stream(url)

    def install(self, url: str, digest: str, received: int, pinned: str | None) -> dict:
        """Check size and hash, then move the partial to the destination; DownloadError (partial removed) if wrong."""
        advice = "The download was discarded; try again, and if it persists report the URL."
        if self.size is not None and received != self.size:
            self.partial.unlink(missing_ok=True)
            raise DownloadError(f"{self.name} from {url} has {received} bytes where {self.size} were expected. "
                                f"{advice}")
        expected, source = (pinned, "pinned") if pinned else (self.published, "published")
        if expected is None:
            source = "computed"
        elif digest != expected:
            self.partial.unlink(missing_ok=True)
            raise DownloadError(f"{self.name} from {url} is damaged or not the expected file: its SHA-256 is "
                                f"{digest}, the {source} one is {expected}. {advice}")
        try:
            os.replace(self.partial, self.destination)
        except OSError as error:
            raise DownloadError(f"{self.name} was downloaded but could not be moved to {self.destination}: "
                                f"{error}") from error
        self.say(f"{self.name}: {received} bytes from {url}, SHA-256 {digest} ({source})")
        return {"path": str(self.destination), "url": url, "sha256": digest, "size": received,
                "sha256_source": source}


def _published_sha256(headers: Message) -> str | None:
    """The lower-case SHA-256 in X-Linked-Etag or ETag, if one is exactly 64 hex digits once unquoted."""
    for name in HASH_HEADERS:
        value = (headers.get(name) or "").strip()
        value = value.removeprefix("W/").strip('"')
        if SHA256_HEX.fullmatch(value):
            return value.lower()
    return None


def _content_range(headers: Message) -> tuple[int | None, int | None]:
    """(first byte or None, total size or None) from a Content-Range header."""
    match = CONTENT_RANGE.fullmatch((headers.get("Content-Range") or "").strip())
    if match is None:
        return None, None
    return _integer(match.group(1)), _integer(match.group(2))


def _integer(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _describe(error: Exception, timeout: float) -> tuple[str, bool]:
    """(short reason, whether the same URL deserves another attempt) for a failed attempt."""
    if isinstance(error, _AttemptFailed):
        return str(error), error.retry
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}".rstrip(), error.code >= 500 or error.code == 429
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, str):  # urllib's own refusals (unknown URL type, no host): permanent
        return reason, False
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s", True
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (f"TLS certificate not trusted ({reason.verify_message}); a proxy that inspects HTTPS needs its "
                "certificate installed", False)
    if isinstance(reason, http.client.IncompleteRead):
        return f"connection cut ({len(reason.partial)} bytes read, {reason.expected} more expected)", True
    return str(reason) or type(reason).__name__, True
