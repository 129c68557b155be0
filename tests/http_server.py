"""A real HTTP server on 127.0.0.1 (http.server.ThreadingHTTPServer in a thread) that serves good images
and every way a web image fails, and counts what it was asked for.

    /good/<seed>.jpg | .png     a JPEG or PNG (conftest.photo(seed)), 96x72
    /delay/<seconds>/<seed>.jpg the JPEG after a pause (a kill mid-run; the per-host limit)
    /flaky/<times>/<name>.jpg   HTTP 500 the first <times> requests of <name>, then the JPEG
    /missing.jpg                404
    /slow.jpg                   no answer for 3 s (beyond a client's timeout), then the JPEG
    /truncated.jpg              Content-Length 20000, 100 bytes sent, connection closed
    /page.jpg                   an HTML page (Content-Type text/html)
    /bomb.png                   a PNG whose header says 30000x30000 (900 Mpx) in 67 bytes
    /loop.jpg                   302 to /loop2.jpg, which 302s back: a redirect loop
    /moved.jpg                  302 to /good/7.jpg
    /big.jpg                    Content-Length 5000000 (a body over a small max_bytes; not sent)
    /drip.jpg                   Content-Length 30000, 1000 bytes every 0.1 s (3 s in all)
    /ftp.jpg                    302 to ftp://127.0.0.1/x.jpg
    /icon.ico                   an ICO (a real image, of a format the image corpus does not list)
    /endless.jpg                image/jpeg, no Content-Length, 2 MB of bytes until the connection closes

`server.hits[path]` counts requests per path; `server.most_in_flight` is the most requests served at
once, each counted from its arrival to its answer's headers (within the client's time with it, so the
client's per-host limit is an upper bound here).
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import jpeg_bytes, photo
from PIL import Image


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(seed)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG header that claims width x height: signature, IHDR, one tiny IDAT, IEND (67 bytes, checksums right)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


class Handler(BaseHTTPRequestHandler):
    server: "FailingServer"

    def log_message(self, *args):  # quiet
        pass

    def send(self, code: int, body: bytes = b"", kind: str = "image/jpeg", length: int | None = None,
             headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.finished()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (a timeout): nothing to do
            pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits[self.path] += 1
            count = server.hits[self.path]
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
        self.counted = True
        try:
            self.answer(self.path.strip("/").split("/"), count)
        finally:
            self.finished()

    def finished(self) -> None:
        """Out of `in_flight` once the answer is decided, before its body is sent: the client may read the
        body and send its next request before this thread runs again, and that is no overlap."""
        if self.counted:
            self.counted = False
            with self.server.lock:
                self.server.in_flight -= 1

    def answer(self, parts: list[str], count: int) -> None:
        name = parts[-1]
        stem = name.rsplit(".", 1)[0]
        if parts[0] == "good":
            self.send(200, png_bytes(int(stem)) if name.endswith(".png") else jpeg_bytes(int(stem)),
                      "image/png" if name.endswith(".png") else "image/jpeg")
        elif parts[0] == "delay":
            time.sleep(float(parts[1]))
            self.send(200, jpeg_bytes(int(stem)))
        elif parts[0] == "flaky":
            if count <= int(parts[1]):
                self.send(500, b"try again", "text/plain")
            else:
                self.send(200, jpeg_bytes(3))
        elif name == "missing.jpg":
            self.send(404, b"not here", "text/plain")
        elif name == "slow.jpg":
            time.sleep(3)
            self.send(200, jpeg_bytes(4))
        elif name == "truncated.jpg":
            self.send(200, jpeg_bytes(5)[:100], length=20_000)
            self.close_connection = True
        elif name == "page.jpg":
            self.send(200, b"<html><body>an image was here</body></html>", "text/html; charset=utf-8")
        elif name == "bomb.png":
            self.send(200, bomb_png(), "image/png")
        elif name in ("loop.jpg", "loop2.jpg"):
            self.send(302, headers={"Location": "/loop2.jpg" if name == "loop.jpg" else "/loop.jpg"})
        elif name == "moved.jpg":
            self.send(302, headers={"Location": "/good/7.jpg"})
        elif name == "big.jpg":
            self.send(200, b"", length=5_000_000)
        elif name == "drip.jpg":
            body = jpeg_bytes(6, (400, 300), quality=95).ljust(30_000, b"\0")[:30_000]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(0, len(body), 1000):
                    self.wfile.write(body[i:i + 1000])
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif name == "ftp.jpg":
            self.send(302, headers={"Location": "ftp://127.0.0.1/x.jpg"})
        elif name == "icon.ico":
            buf = io.BytesIO()
            Image.fromarray(photo(8, 32, 32)).save(buf, "ICO")
            self.send(200, buf.getvalue(), "image/x-icon")
        elif name == "endless.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            try:
                for _ in range(32):
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass
            self.close_connection = True
        else:
            self.send(404, b"", "text/plain")


class FailingServer(ThreadingHTTPServer):
    daemon_threads = True  # a slow answer never holds up shutdown

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter = Counter()
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"


@contextmanager
def serving():
    """A FailingServer answering in a background thread for the duration of the block."""
    server = FailingServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
