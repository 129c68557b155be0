"""Fetching images by URL against a real HTTP server on 127.0.0.1 (tests/http_server.py) that also serves
every failure: one URL (corpus/fetch.py), the unit job (engine/fetch.py) into a fetched store
(store/fetched.py), its rerun, a kill mid-run, verify and repair, the store as an image corpus, the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TESTS, jpeg_bytes
from http_server import bomb_png, serving

from omnimill.corpus.fetch import FetchSettings, fetch, read_url_list
from omnimill.corpus.listing import ByteReader, index_corpus
from omnimill.engine.fetch import fetch_images
from omnimill.errors import UserError
from omnimill.store.fetched import FetchedStore

FAST = dict(workers=1, progress=False, timeout=0.5, url_retries=0, backoff=0.01, max_bytes=200_000,
            urls_per_unit=4)
ENV = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}

# path -> (stage, retryable, http) of its failure; "" stage: a good image
EXPECTED = {
    "good/1.jpg": ("", False, 200),
    "good/2.png": ("", False, 200),
    "moved.jpg": ("", False, 200),  # a redirect, followed
    "flaky/1/a.jpg": ("http", True, 500),  # a 500, then a 200: fixed by a retry
    "missing.jpg": ("http", False, 404),
    "slow.jpg": ("connect", True, 0),  # no answer within the timeout
    "truncated.jpg": ("read", True, 200),  # Content-Length 20000, 100 bytes sent
    "page.jpg": ("type", False, 200),  # text/html
    "bomb.png": ("image", False, 200),  # 30000 x 30000 in its header
    "loop.jpg": ("http", False, 302),
    "big.jpg": ("size", False, 200),  # Content-Length over max_bytes
    "endless.jpg": ("size", False, 200),  # no Content-Length, more bytes than max_bytes
}
REASON = {"flaky/1/a.jpg": "HTTP 500", "missing.jpg": "HTTP 404", "slow.jpg": "timed out",
          "truncated.jpg": "cut short: 100 of 20000", "page.jpg": "text/html", "bomb.png": "decompression bomb",
          "loop.jpg": "redirect loop", "big.jpg": "Content-Length 5000000", "endless.jpg": "over max_bytes"}


@pytest.fixture
def server():
    with serving() as s:
        yield s


def url_list(tmp_path: Path, server, paths, name="urls.jsonl") -> Path:
    """A jsonl list with a key (the path) and an alt text per URL."""
    out = tmp_path / name
    out.write_text("".join(json.dumps({"url": server.url(p), "key": p.rsplit(".", 1)[0], "alt": f"alt of {p}"}) + "\n"
                           for p in paths))
    return out


def by_path(store: FetchedStore) -> dict[str, dict]:
    """path -> that row's columns."""
    rows = {}
    for i, (key, url, _) in enumerate(store.rows()):
        path = url.split("/", 3)[3]
        rows[path] = {name: store.column(name, i).item() for name in ("ok", "stage", "reason", "retryable", "http",
                                                                       "content_type", "sha256", "width", "height")}
    return rows


# ---------------------------------------------------------------- one URL
def test_one_url_each_failure_with_its_reason(server):
    settings = FetchSettings(timeout=0.5, retries=0, backoff=0.01, max_bytes=200_000)
    for path, (stage, retryable, code) in EXPECTED.items():
        got = fetch(server.url(path), settings)
        assert (got.stage, got.retryable, got.http) == (stage, retryable, code), (path, got.reason)
        assert got.ok == (stage == "") and REASON.get(path, "") in got.reason, (path, got.reason)
    good = fetch(server.url("good/1.jpg"), settings)
    assert good.data == jpeg_bytes(1) and good.sha256 == hashlib.sha256(jpeg_bytes(1)).hexdigest()
    assert (good.width, good.height, good.content_type, good.extension) == (96, 72, "image/jpeg", "jpg")
    assert fetch("file:///etc/passwd", settings).stage == "url"  # only http(s): a list cannot read local files
    assert fetch("http://[::1", settings).stage == "url"


def test_retries_with_backoff_fix_a_transient_error_and_stop_at_the_limit(server):
    fixed = fetch(server.url("flaky/2/b.jpg"), FetchSettings(retries=2, backoff=0.01))
    assert fixed.ok and fixed.attempts == 3 and server.hits["/flaky/2/b.jpg"] == 3
    given_up = fetch(server.url("flaky/5/c.jpg"), FetchSettings(retries=1, backoff=0.01))
    assert not given_up.ok and given_up.retryable and server.hits["/flaky/5/c.jpg"] == 2
    final = fetch(server.url("missing.jpg"), FetchSettings(retries=3, backoff=0.01))
    assert server.hits["/missing.jpg"] == 1 and final.attempts == 1  # a 404 is not asked for again


def test_a_dripping_body_is_cut_at_max_seconds_and_a_redirect_leaves_http_never(server):
    started = time.monotonic()
    got = fetch(server.url("drip.jpg"), FetchSettings(timeout=1, max_seconds=0.5, retries=0))
    assert (got.stage, got.retryable) == ("read", True) and "0.5 s in all" in got.reason
    assert time.monotonic() - started < 2  # cut while the body still drips (3 s in all), not at its end
    got = fetch(server.url("ftp.jpg"), FetchSettings(retries=0))
    assert got.stage == "http" and "other than http(s)" in got.reason and server.hits["/ftp.jpg"] == 1


def test_a_lower_pixel_limit_refuses_from_the_header(server, tmp_path):
    got = fetch(server.url("good/1.jpg"), FetchSettings(max_pixels=96 * 72 - 1))
    assert got.stage == "image" and "96x72" in got.reason and not got.data


def test_kept_formats_are_those_the_image_corpus_lists(server):
    got = fetch(server.url("icon.ico"), FetchSettings(retries=0))
    assert got.stage == "type" and "not kept: ICO" in got.reason and not got.retryable
    from omnimill.corpus.fetch import EXTENSIONS, PIL_TYPES
    from omnimill.corpus.image import IMAGE_EXTS

    assert set(EXTENSIONS.values()) <= IMAGE_EXTS and set(PIL_TYPES.values()) <= set(EXTENSIONS)


def test_url_lists_text_jsonl_and_csv(tmp_path):
    (tmp_path / "a.txt").write_text("# images\nhttp://h/x.jpg\n\nhttp://h/y.jpg\nhttp://h/x.jpg\n")
    listed = read_url_list(str(tmp_path / "a.txt"))
    assert [r[1] for r in listed.rows] == ["http://h/x.jpg", "http://h/y.jpg"] and listed.duplicates == 1
    assert listed.rows[0][0] == hashlib.sha1(b"http://h/x.jpg").hexdigest()[:16]
    (tmp_path / "b.csv").write_text("url,key,caption\nhttp://h/x.jpg,doc.1/img_00,a cat\n")
    assert read_url_list(str(tmp_path / "b.csv")).rows == [("doc_1/img_00", "http://h/x.jpg", "a cat")]
    (tmp_path / "c.jsonl").write_text('{"url": "http://h/x.jpg", "key": "k"}\n{"url": "http://h/y.jpg", "key": "k"}\n')
    with pytest.raises(UserError, match="names two URLs"):
        read_url_list(str(tmp_path / "c.jsonl"))


# ---------------------------------------------------------------- the job
def test_every_failure_is_recorded_and_a_rerun_retries_only_the_transient_ones(server, tmp_path):
    urls = url_list(tmp_path, server, EXPECTED)
    out = str(tmp_path / "fetched.zarr")
    first = fetch_images(str(urls), out, **FAST)
    failures = sum(1 for s, _, _ in EXPECTED.values() if s)
    assert first.exit_code == 3 and first.units_failed == [] and first.store_failed == failures
    assert first.store_final == sum(1 for s, r, _ in EXPECTED.values() if s and not r)
    store = FetchedStore.open(out)
    rows = by_path(store)
    for path, (stage, retryable, code) in EXPECTED.items():
        row = rows[path]
        assert (row["stage"], row["retryable"], row["http"], row["ok"]) == (stage, retryable, code, not stage), path
        assert REASON.get(path, "") in row["reason"], (path, row["reason"])
    assert rows["good/2.png"]["content_type"] == "image/png" and rows["good/2.png"]["width"] == 96
    marked = {e["key"]: e for m in store.markers("fetch") for e in m["errors"]}
    assert marked["bomb"]["stage"] == "image" and marked["missing"]["http"] == 404 and len(marked) == failures
    assert store.verify() == []
    info = store.status()
    assert (info["units_done"], info["ok"], info["failed"], info["retryable"]) == (3, 3, failures, 3)
    assert info["failed_by_stage"] == {"http": 3, "connect": 1, "read": 1, "type": 1, "image": 1, "size": 2}
    # status came from the run's unit summary (and kept bytes from the rows): the same as the markers say
    assert store.has("_runs/fetch/summary") and info["bytes"] == sum(m["bytes"] for m in store.markers("fetch")) > 0
    keys = store.read("keys")
    assert [store.index_of(str(k)) for k in keys] == list(range(store.n))  # the key index

    before = dict(server.hits)
    again = fetch_images(str(urls), out, **FAST)  # flaky now answers; slow and truncated fail again
    asked = {p for p in server.hits if server.hits[p] > before.get(p, 0)}
    assert asked == {"/flaky/1/a.jpg", "/slow.jpg", "/truncated.jpg"}
    assert again.samples_retried == 3 and again.store_failed == failures - 1 and again.exit_code == 3
    rows = by_path(FetchedStore.open(out))
    assert rows["flaky/1/a.jpg"]["ok"] and rows["flaky/1/a.jpg"]["sha256"] == hashlib.sha256(jpeg_bytes(3)).hexdigest()
    assert rows["good/1.jpg"]["ok"] and FetchedStore.open(out).verify() == []  # kept rows kept their bytes
    assert FetchedStore.open(out).history()[-1]["samples_retried"] == 3
    info = FetchedStore.open(out).status()  # the retried unit's new marker replaced its summary row
    assert (info["ok"], info["failed"], info["retryable"]) == (4, failures - 1, 2)


def test_per_host_limit_holds_across_units_and_threads(server, tmp_path):
    urls = url_list(tmp_path, server, [f"delay/0.2/{i}.jpg" for i in range(12)])
    result = fetch_images(str(urls), str(tmp_path / "f.zarr"), **{**FAST, "workers": 2, "urls_per_unit": 3},
                          threads=8, per_host=2)
    assert result.exit_code == 0 and result.samples_ok == 12
    assert server.most_in_flight == 2  # 2 workers x 8 threads wanted 16 at once


def test_a_store_of_other_urls_is_refused(server, tmp_path):
    out = str(tmp_path / "f.zarr")
    fetch_images(str(url_list(tmp_path, server, ["good/1.jpg"])), out, **FAST)
    with pytest.raises(UserError, match="give a new fetched store path"):
        fetch_images(str(url_list(tmp_path, server, ["good/2.jpg"], "other.jsonl")), out, **FAST)


def test_killed_mid_run_resumes_without_refetching_finished_units(server, tmp_path):
    paths = [f"delay/0.05/{i}.jpg" for i in range(12)]
    urls, out = url_list(tmp_path, server, paths), tmp_path / "f.zarr"
    cmd = [sys.executable, "-m", "omnimill.fetch_cli", str(urls), str(out), "--urls-per-unit", "3", "--workers", "1",
           "--no-progress"]
    env = {**ENV, "OMNIMILL_FAULT": "unit.marker", "OMNIMILL_FAULT_ONCE": str(tmp_path / "fired")}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 137 and (tmp_path / "fired").exists(), killed.stderr[-2000:]
    store = FetchedStore.open(str(out))
    finished = {m["unit"]: m for m in store.markers("fetch") if m}
    assert 1 <= len(finished) < 4 and store.lock() is not None  # the kill left its lock
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    store = FetchedStore.open(str(out))
    after = store.markers("fetch")
    for unit, marker in finished.items():
        assert after[unit] == marker  # not redone
        assert all(server.hits[f"/{paths[i]}"] == 1 for i in range(marker["start"], marker["stop"]))
    assert all(after) and store.verify() == [] and store.lock() is None
    assert store.history()[-1]["units_done"] == 4 - len(finished)


def test_verify_finds_a_damaged_tar_and_repair_fetches_that_unit_again(server, tmp_path):
    out = tmp_path / "f.zarr"
    urls = url_list(tmp_path, server, [f"good/{i}.jpg" for i in range(8)])
    fetch_images(str(urls), str(out), **FAST)
    tar = out / "images" / "000001.tar"
    data = bytearray(tar.read_bytes())
    data[1024] ^= 0xFF  # a flipped byte inside the first image's bytes
    tar.write_bytes(bytes(data))
    problems = FetchedStore.open(str(out)).verify()
    assert [(p["unit"], p["problem"]) for p in problems] == [(1, "the bytes of row 4 do not match their sha256")]
    before = dict(server.hits)
    result = fetch_images(str(urls), str(out), **FAST, repair=True)
    assert result.units_repaired == 1 and result.exit_code == 0
    assert {p for p in server.hits if server.hits[p] > before.get(p, 0)} == {f"/good/{i}.jpg" for i in range(4, 8)}
    assert FetchedStore.open(str(out)).verify() == []
    os.remove(tar)
    assert FetchedStore.open(str(out)).verify()[0]["problem"] == "tar is missing"


def test_the_good_images_list_as_an_image_corpus(server, tmp_path):
    paths = ["good/1.jpg", "missing.jpg", "good/2.png", "page.jpg", "good/3.jpg", "bomb.png"]
    out = str(tmp_path / "f.zarr")
    fetch_images(str(url_list(tmp_path, server, paths)), out, **FAST)
    store = FetchedStore.open(out)
    index = index_corpus(store.image_corpus())
    assert index.kind == "wds" and sorted(index.keys) == ["good/1", "good/2", "good/3"]
    with ByteReader() as reader:
        for key, source, offset, size, caption in zip(index.keys, index.sources, index.offsets, index.sizes,
                                                      index.captions):
            row = [k for k, _, _ in store.rows()].index(key)
            assert hashlib.sha256(reader.read(source, offset, size)).hexdigest() == store.column("sha256", row)
            assert reader.read(source, offset, size) == store.image_bytes(row)
            assert caption == f"alt of {key}.{'png' if key == 'good/2' else 'jpg'}"


def test_cli_exit_codes(server, tmp_path):
    urls = url_list(tmp_path, server, ["good/1.jpg", "missing.jpg"])
    cmd = [sys.executable, "-m", "omnimill.fetch_cli", str(urls), str(tmp_path / "f.zarr"), "--workers", "1",
           "--no-progress", "--retries", "0"]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "1 failures (1 final)" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and "nothing to do" in proc.stdout  # the 404 is final: not asked for again
    assert server.hits["/missing.jpg"] == 1
    bad = subprocess.run([*cmd[:3], str(tmp_path / "none.txt"), str(tmp_path / "g.zarr")], env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_bomb_header_is_small():
    assert len(bomb_png()) < 100  # the whole "image" is its header: nothing is decoded to refuse it
