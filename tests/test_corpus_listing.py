"""omnimill/corpus/listing.py: folders, WebDataset tars and manifests -> stable keys, byte pointers, captions."""

from __future__ import annotations

import csv
import io
import json
import tarfile
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from conftest import jpeg_bytes, photo, write_images
from omnimill.errors import UserError
from omnimill.corpus.listing import MEMBER_SEP, ByteReader, detect_kind, index_corpus


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(seed, 40, 30)).save(buf, "PNG")
    return buf.getvalue()


def read_all(index) -> list[bytes]:
    with ByteReader() as reader:
        return [reader.read(s, o, z) for s, o, z in zip(index.sources, index.offsets, index.sizes)]


# ---------------------------------------------------------------- folders


def test_folder_keys_sources_and_sidecar_captions(corpus):
    index = index_corpus(str(corpus))
    assert index.kind == "folder" and index.sample_kind == "image"
    assert index.uri == str(corpus)
    assert index.keys == [f"a/img{i:04d}" for i in range(12)] + [f"b/img{i:04d}" for i in range(12, 20)]
    assert index.sources[0] == str(corpus / "a" / "img0000.jpg")
    assert index.sources[-1] == str(corpus / "b" / "img0019.jpg")
    assert index.offsets == [-1] * 20 and index.sizes == [-1] * 20
    captions = dict(zip(index.keys, index.captions))
    assert captions["a/img0001"] == "a red ball on grass"  # .txt, stripped
    assert captions["b/img0013"] == "two cats"  # .json "caption"
    assert sum(1 for c in index.captions if c) == 2


def test_folder_reads_back_the_file_bytes(corpus):
    index = index_corpus(str(corpus))
    data = read_all(index)
    assert data[5] == (corpus / "a" / "img0005.jpg").read_bytes()
    assert data[19] == (corpus / "b" / "img0019.jpg").read_bytes()


def test_folder_odd_names_nesting_and_non_images(tmp_path):
    root = tmp_path / "odd"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "a" / "deep" / "x.y.png").write_bytes(png_bytes(1))  # dots in the name -> "_"
    (root / "v1.2").mkdir()
    (root / "v1.2" / "z.webp").write_bytes(png_bytes(2))  # extension decides, not the content
    (root / "UPPER.JPG").write_bytes(jpeg_bytes(3))  # extensions are case-insensitive
    (root / "notes.md").write_text("not an image")
    (root / "a" / "data.bin").write_bytes(b"\x00\x01")
    (root / "orphan.txt").write_text("a caption without an image")
    (root / "a" / "deep" / "x.y.json").write_text('{"text": "from the text key"}')
    (root / "UPPER.json").write_text("{not json")  # a broken sidecar gives no caption, not a crash
    index = index_corpus(str(root))
    assert index.keys == ["UPPER", "a/deep/x_y", "v1_2/z"]
    assert index.sources == [str(root / "UPPER.JPG"), str(root / "a" / "deep" / "x.y.png"),
                             str(root / "v1.2" / "z.webp")]
    assert index.captions == ["", "from the text key", ""]
    assert all("." not in key for key in index.keys)  # WebDataset splits keys at dots


def test_folder_key_collisions_get_unique_keys_deterministically(tmp_path):
    root = tmp_path / "clash"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg_bytes(1))
    (root / "a.png").write_bytes(png_bytes(2))
    (root / "a_1.jpg").write_bytes(jpeg_bytes(3))  # its natural key is what a.png would get
    (root / "b.jpg").write_bytes(jpeg_bytes(4))
    first = index_corpus(str(root))
    mapping = dict(zip(first.keys, first.sources))
    assert len(set(first.keys)) == 4
    assert mapping["a"] == str(root / "a.jpg")  # first in listing order keeps its key
    assert mapping["a_1"] == str(root / "a.png")  # the later one gets a _1 suffix
    assert mapping["b"] == str(root / "b.jpg")
    assert str(root / "a_1.jpg") in first.sources
    second = index_corpus(str(root))
    assert dict(zip(second.keys, second.sources)) == mapping


def test_indexing_twice_is_identical(corpus):
    first, second = index_corpus(str(corpus)), index_corpus(str(corpus))
    assert first.keys == second.keys
    assert first.sources == second.sources
    assert first.captions == second.captions
    assert first.keys == sorted(first.keys)


def test_relative_folder_uri_is_made_absolute(corpus, monkeypatch):
    monkeypatch.chdir(corpus.parent)
    index = index_corpus("corpus")
    assert index.uri == str(corpus)
    assert index.sources[0] == str(corpus / "a" / "img0000.jpg")


# ---------------------------------------------------------------- WebDataset tars


@pytest.fixture
def shards(tmp_path) -> tuple[Path, dict]:
    """3 shards x 4 samples written by webdataset's own TarWriter; returns (folder, key -> sample)."""
    folder = tmp_path / "wds"
    folder.mkdir()
    samples = {}
    for s in range(3):
        with wds.TarWriter(str(folder / f"shard-{s:03d}.tar")) as sink:
            for i in range(4):
                key = f"s{s}_{i:02d}"
                sample = {"__key__": key}
                if i == 3:
                    sample["png"] = png_bytes(10 * s + i)
                else:
                    sample["jpg"] = jpeg_bytes(10 * s + i)
                if i == 0:
                    sample["txt"] = f"caption {s} {i}"
                elif i == 1:
                    sample["json"] = json.dumps({"caption": f"json caption {s}", "width": 96}).encode()
                sink.write(sample)
                samples[key] = sample
    (folder / "README.md").write_text("not a shard")
    return folder, samples


def test_tars_with_a_brace_range(shards):
    folder, samples = shards
    index = index_corpus(str(folder / "shard-{000..002}.tar"))
    assert index.kind == "wds"
    assert index.keys == [f"s{s}_{i:02d}" for s in range(3) for i in range(4)]
    assert index.sources[0] == f"{folder / 'shard-000.tar'}{MEMBER_SEP}s0_00.jpg"
    assert index.sources[7] == f"{folder / 'shard-001.tar'}{MEMBER_SEP}s1_03.png"
    captions = dict(zip(index.keys, index.captions))
    assert captions["s0_00"] == "caption 0 0"
    assert captions["s2_01"] == "json caption 2"
    assert captions["s1_02"] == "" and captions["s1_03"] == ""
    assert all(o > 0 and o % 512 == 0 for o in index.offsets)  # tar data starts on a block boundary


def test_tar_offsets_read_back_the_image_bytes(shards):
    folder, samples = shards
    index = index_corpus(str(folder / "shard-{000..002}.tar"))
    for key, data, size in zip(index.keys, read_all(index), index.sizes):
        original = samples[key].get("jpg", samples[key].get("png"))
        assert size == len(original)
        assert data == original, key


def test_tar_glob_and_sub_range(shards):
    folder, _ = shards
    by_range = index_corpus(str(folder / "shard-{000..002}.tar"))
    by_glob = index_corpus(str(folder / "shard-*.tar"))
    assert by_glob.keys == by_range.keys
    assert by_glob.offsets == by_range.offsets
    two = index_corpus(str(folder / "shard-{000..001}.tar"))
    assert two.keys == by_range.keys[:8]
    single = index_corpus(str(folder / "shard-002.tar"))
    assert single.keys == by_range.keys[8:]


def test_tar_read_by_plain_webdataset_matches_index(shards):
    """The key and bytes the index points at are the ones webdataset itself yields."""
    folder, _ = shards
    index = index_corpus(str(folder / "shard-{000..002}.tar"))
    dataset = wds.WebDataset(str(folder / "shard-{000..002}.tar"), shardshuffle=False)
    theirs = {s["__key__"]: s.get("jpg", s.get("png")) for s in dataset}
    assert list(theirs) == index.keys
    assert [theirs[k] for k in index.keys] == read_all(index)


def test_tar_written_by_tarfile_with_directories(tmp_path):
    long_dir = "deep/" + "d" * 120 + "/more"  # > 100 characters: needs a pax header before the member
    members = {
        "photos/2021/cat.jpg": jpeg_bytes(1),
        "photos/2021/cat.json": json.dumps({"caption": "a cat"}).encode(),
        f"{long_dir}/dog.0.png": png_bytes(2),  # WebDataset key ends at the basename's first dot
        "photos/v1.2/bird.jpg": jpeg_bytes(3),  # a dot in a directory is not a key boundary
        "photos/readme.md": b"not an image",
        "photos/orphan.txt": b"caption without image",
    }
    path = tmp_path / "handmade.tar"
    with tarfile.open(path, "w") as tar:
        folder = tarfile.TarInfo("photos")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    index = index_corpus(str(path))
    assert index.keys == ["photos/2021/cat", f"{long_dir}/dog", "photos/v1_2/bird"]
    assert index.captions == ["a cat", "", ""]
    assert [s.split(MEMBER_SEP, 1)[1] for s in index.sources] == [
        "photos/2021/cat.jpg", f"{long_dir}/dog.0.png", "photos/v1.2/bird.jpg"]
    assert read_all(index) == [members["photos/2021/cat.jpg"], members[f"{long_dir}/dog.0.png"],
                               members["photos/v1.2/bird.jpg"]]


def test_same_key_in_two_shards_is_made_unique(tmp_path):
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"part-{s}.tar")) as sink:
            sink.write({"__key__": "same", "jpg": jpeg_bytes(s)})
    index = index_corpus(str(tmp_path / "part-{0..1}.tar"))
    assert index.keys == ["same", "same_1"]
    assert read_all(index) == [jpeg_bytes(0), jpeg_bytes(1)]


def test_byte_reader_reads_members_in_any_order_and_reopens_after_close(shards):
    folder, samples = shards
    index = index_corpus(str(folder / "shard-*.tar"))
    order = [11, 0, 5, 5, 3]
    reader = ByteReader()
    try:
        for i in order:
            assert reader.read(index.sources[i], index.offsets[i], index.sizes[i]) == \
                samples[index.keys[i]].get("jpg", samples[index.keys[i]].get("png"))
        reader.close()
        i = 9
        assert reader.read(index.sources[i], index.offsets[i], index.sizes[i]) == samples[index.keys[i]]["jpg"]
    finally:
        reader.close()


# ---------------------------------------------------------------- manifests


@pytest.fixture
def files(tmp_path) -> Path:
    """Images a manifest can point at: tmp/data/imgs/{a,b}.jpg, c.png, and one outside at tmp/elsewhere."""
    root = tmp_path / "data"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.jpg").write_bytes(jpeg_bytes(1))
    (root / "imgs" / "b.jpg").write_bytes(jpeg_bytes(2))
    (root / "c.png").write_bytes(png_bytes(3))
    write_images(tmp_path / "elsewhere", 1)
    return root


def test_jsonl_manifest_relative_and_absolute_paths(files, tmp_path):
    outside = tmp_path / "elsewhere" / "img0000.jpg"
    rows = [
        {"path": "imgs/a.jpg", "caption": "first"},
        {"path": str(outside), "key": "outside_one"},
        {"path": "c.png", "text": "from text"},
        {"url": f"file://{files / 'imgs' / 'b.jpg'}", "key": "by_url"},
    ]
    manifest = files / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a blank line is skipped
    index = index_corpus(str(manifest))
    assert index.kind == "manifest"
    assert index.keys == ["imgs/a", "outside_one", "c", "by_url"]
    assert index.sources == [str(files / "imgs" / "a.jpg"), str(outside), str(files / "c.png"),
                             f"file://{files / 'imgs' / 'b.jpg'}"]
    assert index.captions == ["first", "", "from text", ""]
    assert read_all(index) == [(files / "imgs" / "a.jpg").read_bytes(), outside.read_bytes(),
                               (files / "c.png").read_bytes(), (files / "imgs" / "b.jpg").read_bytes()]


def test_csv_manifest(files):
    manifest = files / "list.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption", "key"])
        writer.writerow(["imgs/b.jpg", "a caption, with a comma", ""])  # empty key: derived from the path
        writer.writerow(["imgs/a.jpg", "", "chosen"])
    index = index_corpus(str(manifest))
    assert index.keys == ["imgs/b", "chosen"]
    assert index.sources == [str(files / "imgs" / "b.jpg"), str(files / "imgs" / "a.jpg")]
    assert index.captions == ["a caption, with a comma", ""]
    assert read_all(index)[1] == (files / "imgs" / "a.jpg").read_bytes()


def test_parquet_manifest(files, tmp_path):
    outside = tmp_path / "elsewhere" / "img0000.jpg"
    table = pa.table({
        "path": ["c.png", str(outside), "imgs/a.jpg"],
        "key": ["k_c", None, "k_a"],
        "caption": ["png", None, "jpeg"],
    })
    manifest = files / "list.parquet"
    pq.write_table(table, manifest)
    index = index_corpus(str(manifest))
    assert index.kind == "manifest"
    assert index.keys[0] == "k_c" and index.keys[2] == "k_a"
    assert index.keys[1] not in ("k_c", "k_a", "") and "." not in index.keys[1]
    assert index.sources == [str(files / "c.png"), str(outside), str(files / "imgs" / "a.jpg")]
    assert index.captions == ["png", "", "jpeg"]
    assert read_all(index) == [(files / "c.png").read_bytes(), outside.read_bytes(),
                               (files / "imgs" / "a.jpg").read_bytes()]


def test_manifest_indexing_twice_is_identical(files):
    manifest = files / "list.jsonl"
    manifest.write_text("".join(json.dumps({"path": p}) + "\n" for p in ["imgs/b.jpg", "imgs/a.jpg", "c.png"]))
    first, second = index_corpus(str(manifest)), index_corpus(str(manifest))
    assert first.keys == second.keys == ["imgs/b", "imgs/a", "c"]  # manifest order, not sorted
    assert first.sources == second.sources


def test_manifest_integer_keys_are_kept(files):
    manifest = files / "ids.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "key": k}) + "\n"
                                for k, p in enumerate(["imgs/a.jpg", "imgs/b.jpg", "c.png"])))
    assert index_corpus(str(manifest)).keys == ["0", "1", "2"]


def test_manifest_explicit_keys_are_webdataset_safe(files):
    manifest = files / "dotted.jsonl"
    manifest.write_text(json.dumps({"path": "imgs/a.jpg", "key": "shot.v2"}) + "\n")
    assert index_corpus(str(manifest)).keys == ["shot_v2"]


# ---------------------------------------------------------------- fsspec


@pytest.fixture
def memory_root():
    """A unique folder on fsspec's in-process memory filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/omnimill-test-{uuid.uuid4().hex}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_folder_corpus(memory_root):
    fs, root = memory_root
    images = {"b/two.png": png_bytes(2), "a/one.jpg": jpeg_bytes(1), "a/one.b.jpg": jpeg_bytes(3)}
    for name, data in images.items():
        fs.pipe(f"{root}/{name}", data)
    fs.pipe(f"{root}/a/one.txt", b"memory caption\n")
    fs.pipe(f"{root}/notes.md", b"ignored")
    index = index_corpus(f"memory://{root}")
    assert index.kind == "folder"
    assert index.keys == ["a/one_b", "a/one", "b/two"]  # sorted by path: "one.b.jpg" < "one.jpg"
    assert index.sources == [f"memory://{root}/a/one.b.jpg", f"memory://{root}/a/one.jpg",
                             f"memory://{root}/b/two.png"]
    assert index.captions == ["", "memory caption", ""]
    assert read_all(index) == [images["a/one.b.jpg"], images["a/one.jpg"], images["b/two.png"]]


def test_memory_manifest_with_relative_paths(memory_root):
    fs, root = memory_root
    fs.pipe(f"{root}/imgs/x.jpg", jpeg_bytes(4))
    fs.pipe(f"{root}/list.jsonl", (json.dumps({"path": "imgs/x.jpg", "caption": "in memory"}) + "\n").encode())
    index = index_corpus(f"memory://{root}/list.jsonl")
    assert index.sources == [f"memory://{root}/imgs/x.jpg"]
    assert index.captions == ["in memory"]
    assert read_all(index) == [jpeg_bytes(4)]


def test_memory_manifest_keys_are_relative_paths_like_local_ones(memory_root, tmp_path):
    fs, root = memory_root
    lines = "".join(json.dumps({"path": p}) + "\n" for p in ["cats/001.jpg", "dogs/001.jpg"])
    for name in ("cats/001.jpg", "dogs/001.jpg"):
        fs.pipe(f"{root}/{name}", jpeg_bytes(1))
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(jpeg_bytes(1))
    fs.pipe(f"{root}/list.jsonl", lines.encode())
    (tmp_path / "list.jsonl").write_text(lines)
    assert index_corpus(str(tmp_path / "list.jsonl")).keys == ["cats/001", "dogs/001"]
    assert index_corpus(f"memory://{root}/list.jsonl").keys == ["cats/001", "dogs/001"]


def test_memory_tars(memory_root):
    fs, root = memory_root
    buf = io.BytesIO()
    with wds.TarWriter(buf) as sink:
        sink.write({"__key__": "m0", "jpg": jpeg_bytes(5), "txt": "tar in memory"})
    fs.pipe(f"{root}/shard-0.tar", buf.getvalue())
    index = index_corpus(f"memory://{root}/shard-{{0..0}}.tar")
    assert index.keys == ["m0"] and index.captions == ["tar in memory"]
    assert read_all(index) == [jpeg_bytes(5)]



# ---------------------------------------------------------------- local paths are taken literally


def write_tar(path: Path, samples: dict[str, tuple[bytes, str]]) -> None:
    with wds.TarWriter(str(path)) as sink:
        for key, (image, caption) in samples.items():
            sink.write({"__key__": key, "jpg": image, "txt": caption})


@pytest.mark.parametrize("name, lookalike", [("br[1]", "br1"), ("a*b", "aXb"), ("x::y", None), ("q?{1,2}", "qQ{1,2}")])
def test_folder_named_with_glob_or_chain_characters(tmp_path, name, lookalike):
    for folder, caption in [(lookalike, "the look-alike's"), (name, "a caption")]:  # a glob would find both
        if folder:
            (tmp_path / folder / "sub").mkdir(parents=True)
            (tmp_path / folder / "sub" / "one.jpg").write_bytes(jpeg_bytes(1 if folder == name else 9))
            (tmp_path / folder / "sub" / "one.txt").write_text(f" {caption} \n")
            (tmp_path / folder / "two.png").write_bytes(png_bytes(2))
            (tmp_path / folder / "two.json").write_text(json.dumps({"caption": f"{caption} in json"}))
    root = tmp_path / name
    for uri in (str(root), f"file://{root}"):
        index = index_corpus(uri)
        assert index.keys == ["sub/one", "two"]
        assert index.captions == ["a caption", "a caption in json"]
        assert index.sources == [str(root / "sub" / "one.jpg"), str(root / "two.png")]
        assert read_all(index) == [jpeg_bytes(1), png_bytes(2)]


def test_tar_shards_named_with_glob_or_chain_characters(tmp_path):
    folder = tmp_path / "x::y" / "br[1]"
    folder.mkdir(parents=True)
    write_tar(folder / "shard[1].tar", {"k0": (jpeg_bytes(1), "first"), "k1": (jpeg_bytes(2), "second")})
    write_tar(folder / "shard1.tar", {"other": (jpeg_bytes(3), "what a glob would match")})
    index = index_corpus(str(folder / "shard[1].tar"))
    assert index.kind == "wds" and index.keys == ["k0", "k1"] and index.captions == ["first", "second"]
    assert index.sources[0] == f"{folder / 'shard[1].tar'}{MEMBER_SEP}k0.jpg"
    assert read_all(index) == [jpeg_bytes(1), jpeg_bytes(2)]

    # the brace range the docs promise still expands, inside a folder whose name holds "[" and "::"
    for s in range(2):
        write_tar(folder / f"part-{s}.tar", {f"p{s}": (jpeg_bytes(10 + s), f"part {s}")})
    index = index_corpus(str(folder / "part-{0..1}.tar"))
    assert index.keys == ["p0", "p1"] and read_all(index) == [jpeg_bytes(10), jpeg_bytes(11)]
    # and a file whose literal name looks like a range is that file
    write_tar(folder / "odd-{0..1}.tar", {"literal": (jpeg_bytes(4), "")})
    assert index_corpus(str(folder / "odd-{0..1}.tar")).keys == ["literal"]


def test_manifest_in_a_folder_named_with_glob_or_chain_characters(tmp_path):
    root = tmp_path / "x::y" / "br[1]"
    (root / "a*b").mkdir(parents=True)
    (root / "a*b" / "one.jpg").write_bytes(jpeg_bytes(1))
    (root / "two.jpg").write_bytes(jpeg_bytes(2))
    rows = [{"path": "a*b/one.jpg", "caption": "relative"}, {"path": str(root / "two.jpg"), "key": "absolute"},
            {"url": f"file://{root / 'two.jpg'}", "key": "url"}]
    manifest = root / "list[1].jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    index = index_corpus(str(manifest))
    assert index.keys == ["a*b/one", "absolute", "url"] and index.captions == ["relative", "", ""]
    assert index.sources[:2] == [str(root / "a*b" / "one.jpg"), str(root / "two.jpg")]
    assert read_all(index) == [jpeg_bytes(1), jpeg_bytes(2), jpeg_bytes(2)]



def test_labelling_a_folder_named_with_glob_and_chain_characters(tmp_path):
    import zarr

    from omnimill.engine.label import label

    root = tmp_path / "x::y" / "br[1]"
    write_images(root, 3)
    (root / "img0001.txt").write_text("a caption")
    result = label(str(root), str(tmp_path / "labels.zarr"), ["rgb"], workers=1, view_size=16, progress=False)
    assert (result.units_done, result.samples_failed) == (1, 0)
    group = zarr.open_group(str(tmp_path / "labels.zarr"), mode="r")
    assert list(group["caption"][:]) == ["", "a caption", ""] and group["rgb/ok"][:].all()


def test_detect_kind():
    assert detect_kind("/data/photos") == "folder"
    assert detect_kind("s3://bucket/shard-{000..009}.tar") == "wds"
    assert detect_kind("/data/list.JSONL") == "manifest"
    assert detect_kind("/data/list.parquet") == "manifest"
    assert detect_kind("/data/list.csv") == "manifest"


# ---------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        index_corpus(str(tmp_path / "nope"))


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found in .*empty"):
        index_corpus(str(tmp_path / "empty"))
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("caption only")
    with pytest.raises(UserError, match="no images found"):
        index_corpus(str(tmp_path / "texts"))


def test_missing_manifest(tmp_path):
    with pytest.raises(UserError, match=r"manifest .*list\.jsonl does not exist"):
        index_corpus(str(tmp_path / "list.jsonl"))


def test_tar_range_matching_nothing(shards):
    folder, _ = shards
    with pytest.raises(UserError, match="no tar shards match"):
        index_corpus(str(folder / "other-{000..002}.tar"))
    with pytest.raises(UserError, match="no tar shards match"):
        index_corpus(str(folder / "nothing-*.tar"))


def test_file_that_is_not_a_tar(tmp_path):
    (tmp_path / "broken.tar").write_text("this is not a tar archive\n" * 40)
    with pytest.raises(UserError, match="broken.tar is not a readable tar"):
        index_corpus(str(tmp_path / "broken.tar"))


def test_manifest_row_without_path(files):
    manifest = files / "holes.jsonl"
    manifest.write_text(json.dumps({"path": "imgs/a.jpg"}) + "\n" + json.dumps({"caption": "no path"}) + "\n")
    with pytest.raises(UserError, match=r"row 1 has no 'path' or 'url'"):
        index_corpus(str(manifest))


def test_csv_manifest_without_path_column(files):
    manifest = files / "nopath.csv"
    manifest.write_text("file,caption\nimgs/a.jpg,hello\n")
    with pytest.raises(UserError, match=r"row 0 has no 'path' or 'url'"):
        index_corpus(str(manifest))


def test_manifest_line_that_is_not_json(files):
    manifest = files / "bad.jsonl"
    manifest.write_text(json.dumps({"path": "imgs/a.jpg"}) + "\n{oops\n")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        index_corpus(str(manifest))
