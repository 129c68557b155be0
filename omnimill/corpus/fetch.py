"""One image URL -> its bytes, or a recorded failure that says where and why (`Fetched`); and reading a
list of URLs (`read_url_list`).

    scheme (http/https only) -> per-host slot -> GET (timeout per connect and per read; redirects followed,
    at most `max_redirects`) -> HTTP status -> Content-Type (image/*; none or octet-stream: judged by the
    bytes) -> Content-Length and the bytes read (at most `max_bytes`) -> image header (width x height read
    before any decoding: a decompression bomb is refused at `max_pixels`) -> sha256

The standard library's urllib, not fsspec's HTTP (aiohttp): a blocking call per URL in a worker thread
keeps each limit visible and exact (a timeout per socket operation, a redirect count, a byte count read
as a stream and cut at `max_bytes + 1`), needs no event loop inside Dask's worker threads and no new
dependency; concurrency comes from the threads of a unit (engine/fetch.py), capped per host here.

A failure is `retryable` when the same request may succeed later: a timeout, a refused or reset
connection, a body shorter than its Content-Length, HTTP 408, 429 and 5xx. Within one call those are
tried again up to `retries` times, waiting `backoff * 2**attempt` seconds (0.5, 1, 2 s by default); what
stays failed is recorded retryable, and the fetch job's next run asks for it again. Everything else (404,
a page that is not an image, too many bytes or pixels, a redirect loop) is final.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from omnimill.corpus.image import DEFAULT_MAX_PIXELS
from omnimill.corpus.listing import normalise_uri, url_to_fs
from omnimill.corpus.sample import make_key
from omnimill.errors import UserError

SCHEMES = ("http", "https")
RETRY_HTTP = {408, 429, 500, 502, 503, 504}  # the server may answer otherwise later
READ_BLOCK = 1 << 16
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif",
              "image/bmp": "bmp", "image/tiff": "tif"}  # all in corpus/image.IMAGE_EXTS: listed as images
PIL_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
             "BMP": "image/bmp", "TIFF": "image/tiff", "MPO": "image/jpeg"}


@dataclass(frozen=True)
class FetchSettings:
    """Limits of one fetch. Defaults: 10 s per socket operation, 2 extra tries, 20 MB, PIL's 89.5 Mpx."""

    timeout: float = 10.0
    retries: int = 2  # extra attempts for a retryable failure, within one call
    backoff: float = 0.5  # seconds before the first extra attempt; doubled each time
    max_bytes: int = 20_000_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_redirects: int = 5
    max_seconds: float = 60.0  # the whole request: a server dripping a byte per `timeout` is cut here
    per_host: int = 4  # requests in flight to one host from this process
    user_agent: str = "omnimill-fetch/1"

    def record(self) -> dict:
        return asdict(self)


@dataclass
class Fetched:
    """What one URL gave: `ok` with its bytes, or the `stage` where it failed and the `reason`."""

    url: str
    ok: bool = False
    stage: str = ""  # "" when ok; else url | connect | http | type | size | read | image
    reason: str = ""
    retryable: bool = False
    http: int = 0  # the last HTTP status seen (0: no response)
    content_type: str = ""  # the image's own type (from its bytes) when ok; the server's header otherwise
    data: bytes = b""
    sha256: str = ""
    width: int = 0
    height: int = 0
    attempts: int = 0

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.content_type]  # ok means one of these (_as_image)


class _Failure(Exception):
    def __init__(self, stage: str, reason: str, retryable: bool = False, http: int = 0, content_type: str = ""):
        super().__init__(reason)
        self.stage, self.reason, self.retryable, self.http, self.content_type = (stage, reason, retryable, http,
                                                                                 content_type)


# ---------------------------------------------------------------- per-host slots
_in_use: dict[str, int] = {}  # host -> requests in flight from this process; a host leaves at 0 (a list of
_changed = threading.Condition()  # a million hosts keeps no million entries)


@contextmanager
def host_slot(host: str, limit: int):
    """At most `limit` requests in flight to `host` from this process (all units of a threaded worker)."""
    with _changed:
        _changed.wait_for(lambda: _in_use.get(host, 0) < limit)
        _in_use[host] = _in_use.get(host, 0) + 1
    try:
        yield
    finally:
        with _changed:
            _in_use[host] -= 1
            if not _in_use[host]:
                del _in_use[host]
            _changed.notify_all()


# ---------------------------------------------------------------- one URL
def fetch(url: str, settings: FetchSettings = FetchSettings()) -> Fetched:
    """GET `url` within `settings`, trying a retryable failure again with backoff. Never raises for a bad URL,
    server or body: the failure is in the result."""
    try:
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname
    except ValueError:  # an unbalanced IPv6 bracket, a bad port
        host = None
    if host is None or parsed.scheme not in SCHEMES:
        return Fetched(url, stage="url", reason=f"not an http(s) URL: {url[:200]!r}")
    attempt = 0
    while True:
        attempt += 1
        try:
            with host_slot(host, settings.per_host):
                data, code, header_type = _get(url, settings)
            result = _as_image(url, data, code, header_type, settings)
            result.attempts = attempt
            return result
        except _Failure as f:
            if not f.retryable or attempt > settings.retries:
                return Fetched(url, stage=f.stage, reason=f.reason, retryable=f.retryable, http=f.http,
                               content_type=f.content_type, attempts=attempt)
        time.sleep(settings.backoff * 2 ** (attempt - 1))  # 0.5, 1, 2 s ... (after attempts 1, 2, 3)


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, limit: int):
        self.max_redirections = limit  # urllib's own counter: more raises HTTPError "redirect error ... loop"
        self.max_repeats = 1  # the same URL twice: a loop, stop at once

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in SCHEMES:  # urllib alone would follow one to ftp://
            raise urllib.error.HTTPError(newurl, code, f"redirect to a scheme other than http(s): {newurl[:200]}",
                                         headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(settings: FetchSettings):
    # Only our redirect handler is swapped in: proxies from the environment, HTTPS and errors stay urllib's.
    return urllib.request.build_opener(_LimitedRedirects(settings.max_redirects))


def _get(url: str, settings: FetchSettings) -> tuple[bytes, int, str]:
    """(body, status, Content-Type) of a 200, reading at most max_bytes + 1 bytes; else _Failure."""
    request = urllib.request.Request(url, headers={"User-Agent": settings.user_agent, "Accept": "image/*"})
    deadline = time.monotonic() + settings.max_seconds
    try:
        response = _opener(settings).open(request, timeout=settings.timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if 300 <= e.code < 400:
            scheme = str(e.reason).startswith("redirect to a scheme")  # ours, above
            return _raise("http", str(e.reason) if scheme else f"redirect loop, or more than {settings.max_redirects} "
                          f"redirects (last: HTTP {e.code})", http=e.code)
        return _raise("http", f"HTTP {e.code} {e.reason}", e.code in RETRY_HTTP, e.code)
    except urllib.error.URLError as e:
        reason = e.reason
        timed_out = isinstance(reason, (socket.timeout, TimeoutError))
        return _raise("connect", f"{'timed out' if timed_out else 'no connection'}: {reason}", True)
    except (ValueError, http.client.InvalidURL) as e:  # control characters, a bad port
        return _raise("url", f"not a valid URL ({e})")
    except (TimeoutError, socket.timeout) as e:  # the status line did not come in time
        return _raise("connect", f"timed out waiting for the response ({e})", True)
    except (http.client.HTTPException, OSError) as e:  # reset, a malformed status line
        return _raise("connect", f"{type(e).__name__}: {e}", True)
    with response:
        code = response.status
        header_type = (response.headers.get_content_type() or "").lower() if response.headers.get(
            "Content-Type") else ""
        if header_type and not header_type.startswith("image/") and header_type != "application/octet-stream":
            return _raise("type", f"not an image: Content-Type {header_type}", http=code, content_type=header_type)
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > settings.max_bytes:
            return _raise("size", f"Content-Length {int(length)} bytes > max_bytes {settings.max_bytes}", http=code,
                          content_type=header_type)
        try:
            data = _read_at_most(response, settings.max_bytes + 1, deadline)
        except (TimeoutError, socket.timeout):
            return _raise("read", f"timed out reading the body (over {settings.timeout:g} s between bytes, or "
                          f"{settings.max_seconds:g} s in all)", True, code, header_type)
        except (http.client.HTTPException, OSError) as e:
            return _raise("read", f"{type(e).__name__} reading the body: {e}", True, code, header_type)
    if length and length.isdigit() and len(data) < int(length):  # http.client returns a short body silently
        return _raise("read", f"body cut short: {len(data)} of {int(length)} bytes", True, code, header_type)
    if len(data) > settings.max_bytes:
        return _raise("size", f"body over max_bytes {settings.max_bytes}", http=code, content_type=header_type)
    return data, code, header_type


def _read_at_most(response, limit: int, deadline: float) -> bytes:
    """Read the body in blocks until its end or `limit` bytes (a server that never stops is cut there); past
    `deadline` (time.monotonic) raise TimeoutError."""
    buf = io.BytesIO()
    while buf.tell() < limit:
        if time.monotonic() > deadline:
            raise TimeoutError("over max_seconds")
        block = response.read1(min(READ_BLOCK, limit - buf.tell()))  # what has come: the deadline is checked often
        if not block:
            break
        buf.write(block)
    return buf.getvalue()


def _raise(stage: str, reason: str, retryable: bool = False, http: int = 0, content_type: str = ""):
    raise _Failure(stage, reason, retryable, http, content_type)


def _as_image(url: str, data: bytes, code: int, header_type: str, settings: FetchSettings) -> Fetched:
    """Read the image header only: its format and size decide before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    def fail(reason: str) -> Fetched:
        return Fetched(url, stage="image", reason=reason, http=code, content_type=header_type)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides, below
        try:
            with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header, decodes nothing
                width, height, fmt = image.width, image.height, image.format
                if width * height > settings.max_pixels:
                    return fail(f"decompression bomb: {width}x{height} = {width * height / 1e6:.0f} Mpx > "
                                f"max_pixels {settings.max_pixels / 1e6:.1f} Mpx")
                image.verify()  # structure and checksums (PNG CRCs), still without decoding pixels
        except Image.DecompressionBombError as e:  # PIL's own limit (2 x Image.MAX_IMAGE_PIXELS) met in open(),
            return fail(f"decompression bomb: {e}")  # also from the header: the lower of the two limits holds
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            return fail(f"not a readable image ({type(e).__name__}: {str(e)[:200]})")
    kind = PIL_TYPES.get(fmt or "")
    if kind is None:  # ICO, TGA, ...: the image corpus would not list its file (corpus/image.IMAGE_EXTS)
        return Fetched(url, stage="type", reason=f"an image format that is not kept: {fmt} (kept: "
                       f"{', '.join(sorted(PIL_TYPES))})", http=code, content_type=header_type)
    return Fetched(url, ok=True, http=code, content_type=kind, data=data, sha256=hashlib.sha256(data).hexdigest(),
                   width=width, height=height)


# ---------------------------------------------------------------- a list of URLs
URL_COLUMNS = ("url", "URL", "image_url", "src")
CAPTION_COLUMNS = ("caption", "alt", "alt_text", "text")


@dataclass
class UrlList:
    uri: str
    rows: list[tuple[str, str, str]]  # (key, url, caption), one per distinct URL, in list order
    n_lines: int  # entries read (duplicates included)
    duplicates: int  # entries dropped: the same URL again


def read_url_list(uri: str, storage_options: dict | None = None) -> UrlList:
    """A URL list: `.jsonl` (objects with `url`, optional `key` and `caption`/`alt`), `.csv` (the same
    columns), else plain text (one URL per line; blank lines and `#` comments skipped). A key given is made
    WebDataset-safe (corpus/sample.make_key); else it is sha1(url)[:16], stable when the list is reordered.
    The same URL twice is fetched once (the first entry's key); one key for two URLs is refused."""
    uri = normalise_uri(uri)
    fs, path = url_to_fs(uri, storage_options)
    if not fs.exists(path):
        raise UserError(f"URL list {uri} does not exist")
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8")
    entries: list[dict] = []
    if path.lower().endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"URL list {uri} line {n} is not JSON ({e})") from None
    elif path.lower().endswith(".csv"):
        entries = list(csv.DictReader(io.StringIO(text)))
    else:
        entries = [{"url": line.strip()} for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    rows, by_key, seen, duplicates = [], {}, set(), 0
    for n, entry in enumerate(entries, 1):
        url = next((str(entry[c]).strip() for c in URL_COLUMNS if entry.get(c)), "")
        if not url:
            raise UserError(f"URL list {uri} entry {n} has no url ({', '.join(URL_COLUMNS)})")
        if url in seen:
            duplicates += 1
            continue
        seen.add(url)
        key = make_key(str(entry["key"])) if entry.get("key") not in (None, "") else \
            hashlib.sha1(url.encode()).hexdigest()[:16]
        if key in by_key:
            raise UserError(f"URL list {uri}: key {key!r} names two URLs ({by_key[key]} and {url}); keys are unique")
        by_key[key] = url
        caption = next((str(entry[c]) for c in CAPTION_COLUMNS if entry.get(c)), "")
        rows.append((key, url, caption))
    if not rows:
        raise UserError(f"URL list {uri} holds no URLs")
    return UrlList(uri, rows, len(entries), duplicates)
