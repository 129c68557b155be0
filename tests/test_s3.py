"""Stores and shards through s3:// URLs, against a real moto S3 server on 127.0.0.1.

The endpoint reaches s3fs (and the Dask workers, which inherit the environment) through botocore's
standard AWS_ENDPOINT_URL variable, exactly as a user points omnimill at MinIO or another S3 service.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "omnimill-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("moto server did not start; see moto.log")
            time.sleep(0.2)
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    yield fs
    server.terminate()
    server.wait(10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    s3fs.S3FileSystem.clear_instance_cache()


def test_label_tokenize_export_and_load_through_s3(s3, token_data):
    from omnimill.engine.label import label
    from omnimill.engine.tokenize import tokenize
    from omnimill.shards.loader import TokenDataset, TokenLoader
    from omnimill.store.tokens import TokenStore
    from omnimill.shards.verify import verify
    from omnimill.shards.wds import export_wds

    s3.put(str(token_data["root"] / "corpus"), f"{BUCKET}/corpus", recursive=True)
    labels, tokens, shards = (f"s3://{BUCKET}/{name}" for name in ("labels.zarr", "tokens.zarr", "shards"))
    result = label(f"s3://{BUCKET}/corpus", labels, ["rgb", "palette"], workers=1, unit_size=8, view_size=64,
                   progress=False)
    assert result.exit_code == 3  # the two broken files, recorded
    assert tokenize(labels, tokens, list(token_data["tokenizers"].values()), n_crops=2, workers=1,
                    progress=False).exit_code == 0

    local, remote = TokenStore.open(token_data["tokens"]), TokenStore.open(tokens)
    assert list(remote.group["keys"][:]) == list(local.group["keys"][:])
    for m in ("rgb_image", "palette", "caption"):  # same images, teachers, tokenizers: the same tokens
        np.testing.assert_array_equal(remote.group[f"{m}/tokens"][:], local.group[f"{m}/tokens"][:])

    manifest = export_wds(tokens, shards, samples_per_shard=16)
    assert s3.exists(f"{BUCKET}/shards/manifest.json") and len(manifest["shards"]) == 3
    assert verify(shards)["problems"] == [] and verify(tokens)["problems"] == []

    for uri in (tokens, shards):
        loader = TokenLoader(TokenDataset(uri), batch_size=8, epochs=1, num_workers=2, crops="first")
        batches = list(loader)
        keys = [k for b in batches for k in b["keys"]]
        assert sorted(keys) == sorted(local.group["keys"][:].tolist())
        rgb = local.group["rgb_image/tokens"][:]
        index = {k: i for i, k in enumerate(local.group["keys"][:])}
        for b in batches:
            for i, key in enumerate(b["keys"]):
                if b["present"]["rgb_image"][i]:
                    assert (b["tokens"]["rgb_image"][i].numpy() == rgb[index[key], 0]).all()


def test_damaged_s3_shard_is_reported(s3, token_data):
    from omnimill.shards.verify import verify
    from omnimill.shards.wds import export_wds

    shards = f"s3://{BUCKET}/damaged"
    export_wds(token_data["tokens"], shards, samples_per_shard=16)
    data = s3.cat(f"{BUCKET}/damaged/shard-000001.tar")
    s3.pipe(f"{BUCKET}/damaged/shard-000001.tar", data[:3000])
    problems = verify(shards)["problems"]
    assert any(p["where"] == "shard-000001.tar" and "manifest says" in p["reason"] for p in problems)
