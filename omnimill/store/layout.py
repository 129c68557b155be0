"""Which arrays of a store share objects (Zarr v3 shards), and why only those.

On an object store every chunk is one object: one PUT to write, one GET (or HEAD) to read or check, one
entry to list. With one chunk per unit, a billion samples at unit_size 128 are

    1e9 / 128 = 7.8M units -> 7.8M objects per array

and a label store holds ~6 index columns (keys, source, offset, size, caption, crop_box) before any
teacher: ~47M objects, 47M PUTs at creation and 47M HEADs for one `verify`.

Zarr v3 sharding (`shards=` in create_array, the ShardingCodec) packs many chunks ("inner chunks") into
one object, with an index of byte ranges at its end; a reader fetches the index and the inner chunk it
needs (two ranged GETs). But a write is read-modify-write of the whole shard: two workers writing two
units of one shard both read it, each puts back its own version, and the later PUT silently drops the
other unit. So an array is sharded here only when ONE process writes it:

- written once, by the client, at creation (the corpus index: keys, source, offset, size, caption, the
  kind's index columns; the token store's keys and crops; the cut store's videos): sharded
  (`once`, below). 1e9 / 2^20 rows per shard = 954 objects per column instead of 7.8M.
- written only by the client holding the lock (the unit summary, summary.py; the key index,
  keyindex.py): sharded.
- written per unit by the workers (teacher fields, `ok`, the kind's per-sample arrays as crop_box, the
  commit markers): NOT sharded. One chunk (one object) per unit, as before, so workers never share an
  object. For these the lever is unit_size: objects per array = N / unit_size (1e9 / 4096 = 244k).
  Sharding them with shard = one unit and smaller inner chunks would not lower the object count (still
  one object per unit); it only helps readers that want less than a unit, so it is not done.

Sizes: an inner chunk is ROWS_PER_CHUNK rows rounded to whole units (a unit's rows never straddle two
inner chunks, so `verify` still names the unit a damaged chunk belongs to), a shard CHUNKS_PER_SHARD inner
chunks. Keys of ~40 bytes: 8192 x 40 B = 320 kB per inner chunk read for one lookup or one unit's index
rows; 128 x 320 kB = 40 MB per shard object, written once.
"""

from __future__ import annotations

ROWS_PER_CHUNK = 8192
CHUNKS_PER_SHARD = 128


def once(unit_size: int, row_shape: tuple = ()) -> dict:
    """chunks= and shards= of an array that one writer writes (see the module docstring)."""
    rows = unit_size * max(1, round(ROWS_PER_CHUNK / unit_size))
    return {"chunks": (rows, *row_shape), "shards": (rows * CHUNKS_PER_SHARD, *row_shape)}


def per_unit(unit_size: int, row_shape: tuple = ()) -> dict:
    """chunks= of an array that the workers write, one unit each: one object per unit, never shared."""
    return {"chunks": (unit_size, *row_shape), "shards": None}
