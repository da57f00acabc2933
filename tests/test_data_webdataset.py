"""WebDataset shards: samples come back byte for byte, damage is counted, iterators resume."""

import functools
import io
import tarfile

import pytest
import seqio
import tensorflow as tf

from flamingo_jax.data.images import DataStats
from flamingo_jax.data.webdataset import index_tar, read_shard, split_name


def shard_members(shard: int) -> list[tuple[str, bytes]]:
  """Tar members of a test shard, in order: several samples and names, a nested key, binary
  data ending in NUL bytes, and a member whose name has no key."""
  prefix = f"s{shard}"
  return [
      (f"{prefix}_000.jpg", bytes(range(256)) * 3 + b"\x00\x00"),
      (f"{prefix}_000.txt", f"caption {shard} zero".encode()),
      (f"{prefix}_000.json", b'{"url": "http://x"}'),
      ("README", b"not a sample"),
      (f"{prefix}_001.txt", b""),
      (f"{prefix}_001.0.jpg", b"\xff\xd8" * 700),
      (f"nested/dir/{prefix}_002.mp4", b"\x00" * 1500),
      (f"nested/dir/{prefix}_002.txt", "caption with é".encode()),
      (f"{prefix}_003.png", b"png" * 400),
      (f"{prefix}_003.txt", b"last"),
  ]


def expected_samples(shard: int) -> list[tuple[bytes, dict[str, bytes]]]:
  samples = []
  for path, data in shard_members(shard):
    if (parts := split_name(path)) is None:
      continue
    key, name = parts
    if not samples or samples[-1][0] != key.encode():
      samples.append((key.encode(), {}))
    samples[-1][1][name] = data
  return samples


def tar_bytes(members) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
    directory = tarfile.TarInfo("nested/dir")
    directory.type = tarfile.DIRTYPE
    tar.addfile(directory)
    for path, data in members:
      info = tarfile.TarInfo(path)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buffer.getvalue()


def write_shards(folder, count: int) -> str:
  for shard in range(count):
    (folder / f"shard-{shard:02d}.tar").write_bytes(tar_bytes(shard_members(shard)))
  return str(folder / "shard-*.tar")


def member_end(data: bytes, path: str) -> int:
  """Offset just past the data of member `path` in the tar `data`."""
  with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    info = tar.getmember(path)
  return info.offset_data + info.size


def as_samples(elements) -> list[tuple[bytes, dict[str, bytes]]]:
  return [(e["key"], dict(zip([n.decode() for n in e["names"]], e["contents"])))
          for e in elements]


def test_split_name():
  assert split_name("dir/000123.jpg") == ("dir/000123", "jpg")
  assert split_name("000123.0.jpg") == ("000123", "0.jpg")
  assert split_name("a.b/000123.tar.gz") == ("a.b/000123", "tar.gz")
  assert split_name("dir/README") is None
  assert split_name("dir/._000123.jpg") is None


def test_index_tar_offsets_point_at_the_data(tmp_path):
  pattern = write_shards(tmp_path, 1)
  stats = DataStats()
  index = index_tar(pattern.replace("*", "00"), stats)
  data = (tmp_path / "shard-00.tar").read_bytes()
  got = [(key.encode(), {name: data[offset:offset + size] for name, (offset, size) in m.items()})
         for key, m in index]
  assert got == expected_samples(0)
  assert [list(m) for _, m in index] == [["jpg", "txt", "json"], ["txt", "0.jpg"],
                                         ["mp4", "txt"], ["png", "txt"]]
  assert stats.counts() == {}


def test_seqio_source_reads_every_sample_exactly(tmp_path):
  stats = DataStats()
  source = seqio.FileDataSource(read_file_fn=functools.partial(read_shard, stats=stats),
                                split_to_filepattern={"train": write_shards(tmp_path, 3)})
  dataset = source.get_dataset("train", shuffle=False)
  assert dataset.element_spec["names"].shape.as_list() == [None]
  got = as_samples(dataset.as_numpy_iterator())
  for shard in range(3):
    keys = [key for key, _ in expected_samples(shard)]
    assert [s for s in got if s[0] in keys] == expected_samples(shard)  # In tar order.
  assert len(got) == 12
  assert stats.counts() == {}


@pytest.mark.parametrize("cut,kept", [
    ("nested/dir/s0_002.mp4", 2),  # At the end of a member's data, mid-sample.
    ("s0_003.png", 3),  # Mid-sample: the unfinished sample s0_003 is dropped.
])
def test_truncated_shard_keeps_the_intact_samples(tmp_path, cut, kept):
  data = tar_bytes(shard_members(0))
  for end in (member_end(data, cut) - 100, -(-member_end(data, cut) // 512) * 512):
    (tmp_path / "cut.tar").write_bytes(data[:end])
    stats = DataStats()
    got = as_samples(read_shard(tf.constant(str(tmp_path / "cut.tar")), stats).as_numpy_iterator())
    assert got == expected_samples(0)[:kept]
    assert stats.counts() == {"corrupt_tar": 1}


@pytest.mark.parametrize("damage", ["garbage_header", "garbage_file", "empty_file"])
def test_damaged_shards_are_counted(tmp_path, damage):
  data = tar_bytes(shard_members(0))
  end = -(-member_end(data, "s0_001.0.jpg") // 512) * 512  # The header after sample s0_001.
  data = {"garbage_header": data[:end] + b"\x07" * 512 + data[end + 512:],
          "garbage_file": b"\x07" * 4096, "empty_file": b""}[damage]
  (tmp_path / "bad.tar").write_bytes(data)
  stats = DataStats()
  got = as_samples(read_shard(tf.constant(str(tmp_path / "bad.tar")), stats).as_numpy_iterator())
  # Sample s0_001 may have more members past the damage, so it goes too.
  assert got == (expected_samples(0)[:1] if damage == "garbage_header" else [])
  assert stats.counts() == {"corrupt_tar": 1}


def test_iterator_checkpoint_resumes_exactly(tmp_path):
  stats = DataStats()
  source = seqio.FileDataSource(read_file_fn=functools.partial(read_shard, stats=stats),
                                split_to_filepattern={"train": write_shards(tmp_path, 3)})
  dataset = source.get_dataset("train", shuffle=True, seed=7).prefetch(2)
  iterator = iter(dataset)
  seen = [next(iterator) for _ in range(5)]
  path = tf.train.Checkpoint(it=iterator).write(str(tmp_path / "ckpt"))
  following = as_samples(tf.nest.map_structure(lambda t: t.numpy(), e) for e in iterator)
  restored = iter(dataset)
  tf.train.Checkpoint(it=restored).read(path).assert_consumed()
  assert as_samples(tf.nest.map_structure(lambda t: t.numpy(), e) for e in restored) == following
  assert len(seen) + len(following) == 12
  del iterator, restored
