"""Bad input never stops a run and is never silently lost: each kind is skipped or repaired by its
stated rule (preprocess.py, sources.py) and counted."""

import json

import numpy as np

from flamingo_jax.configs import load_config
from flamingo_jax.data import images, mixtures, preprocess, sources

from test_data_formats import (COLOURS, encoded, image_colours, read, render, write_tar,
                               write_tfrecord)

# Images over 100 x 100 pixels count as oversized here, so the test needs no huge file.
MEDIA = preprocess.MediaSpec(image_size=32, filter=images.ImageFilter(max_pixels=100 * 100))


def doc(*pieces) -> dict:
  """OBELICS record from pieces: a str is text, an int is image file {i}.png, a str ending in
  .png a file name."""
  texts = [p if isinstance(p, str) and not p.endswith(".png") else None for p in pieces]
  files = [f"{p}.png" if isinstance(p, int) else p if texts[i] is None else None
           for i, p in enumerate(pieces)]
  return {"texts": texts, "images": files}


def test_bad_documents_are_skipped_or_repaired_and_counted(tmp_path):
  for i, colour in enumerate(COLOURS):
    (tmp_path / f"{i}.png").write_bytes(encoded(colour))
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  (tmp_path / "huge.png").write_bytes(encoded((1, 2, 3), size=(120, 120)))
  lines = [
      json.dumps(doc(0, "Fine.", 1, "Also fine.")),                     # kept
      json.dumps(doc("missing.png", "Lost.", 1, "Kept.")),              # missing_image_file
      json.dumps(doc(0, "Before.", "corrupt.png", "After.")),           # corrupt_image
      json.dumps(doc("Only text.", "More text.")),                      # no_images: dropped
      json.dumps(doc(*[p for i in range(7) for p in (i, f"Image {i}.")])),  # images_over_limit
      json.dumps(doc(0, "", 1, "")),                                    # empty_text: dropped
      json.dumps(doc("huge.png", "Too big.", 2, "Small.")),             # oversized_image
      '{"texts": ["unterminated',                                       # corrupt_record
      json.dumps({"pages": []}),                                        # corrupt_record
      json.dumps(doc("gone.png", "Nothing left.")),                     # missing + no_images
  ]
  data = "\n".join(lines).encode() + b'\n{"texts": [null, "Caf\xe9."], "images": ["3.png", null]}\n'
  (tmp_path / "docs.jsonl").write_bytes(data)  # The last line is Latin-1: non_utf8_text.

  examples = read("bad_docs", "interleaved", sources.Jsonl(str(tmp_path / "docs.jsonl")),
                  max_length=256, media=MEDIA)
  assert [render(e) for e in examples] == [
      "<image>Fine.<EOC><image>Also fine.<EOC><EOS>",
      "Lost.<EOC><image>Kept.<EOC><EOS>",
      "<image>Before. After.<EOC><EOS>",
      "".join(f"<image>Image {i}.<EOC>" for i in range(5)),  # Ends before the 6th image.
      "Too big.<EOC><image>Small.<EOC><EOS>",
      "<image>Caf\ufffd.<EOC><EOS>",
  ]
  assert [image_colours(e) for e in examples] == [
      COLOURS[:2], COLOURS[1:2], COLOURS[:1], COLOURS[:5], COLOURS[2:3], COLOURS[3:4]]
  assert preprocess.task_stats("bad_docs").counts() == {
      "missing_image_file": 2, "corrupt_image": 1, "no_images": 2, "images_over_limit": 1,
      "empty_text": 1, "oversized_image": 1, "corrupt_record": 2, "non_utf8_text": 1}
  assert "bad_docs: data: corrupt_image=1" in preprocess.report()


def test_bad_pairs_and_videos_are_skipped_and_counted(tmp_path):
  write_tar(tmp_path / "pairs-000.tar", {
      "ok": {"png": encoded(COLOURS[0]), "txt": b"Good."},
      "no_text": {"png": encoded(COLOURS[1])},
      "empty": {"png": encoded(COLOURS[1]), "txt": b"   "},
      "corrupt": {"jpg": b"\xff\xd8\xff garbage", "txt": b"Corrupt."},
      "no_image": {"txt": b"Where is it?"},
      "latin1": {"png": encoded(COLOURS[2]), "txt": b"Na\xefve."},
  })
  pairs = read("bad_pairs", "pair", sources.WebDataset(str(tmp_path / "pairs-*.tar")),
               max_images=1)
  assert [render(e) for e in pairs] == ["<image>Good.<EOC><EOS>", "<image>Na\ufffdve.<EOC><EOS>"]
  assert preprocess.task_stats("bad_pairs").counts() == {
      "corrupt_record": 1, "empty_text": 1, "corrupt_image": 1, "missing_image_file": 1,
      "no_images": 2, "non_utf8_text": 1}

  write_tfrecord(tmp_path / "clips.tfrecord", [{"video": b"not a video", "text": b"Broken."}])
  assert read("bad_videos", "video", sources.TFRecord(str(tmp_path / "clips.tfrecord")),
              max_images=1) == []
  assert preprocess.task_stats("bad_videos").counts() == {"corrupt_video": 1}


def test_a_truncated_shard_yields_its_intact_samples(tmp_path):
  write_tar(tmp_path / "pairs-000.tar", {
      f"{i}": {"png": encoded(COLOURS[i]), "txt": b"Caption."} for i in range(4)})
  data = (tmp_path / "pairs-000.tar").read_bytes()
  (tmp_path / "pairs-000.tar").write_bytes(data[:len(data) * 2 // 3])
  pairs = read("cut_pairs", "pair", sources.WebDataset(str(tmp_path / "pairs-*.tar")),
               max_images=1)
  assert 1 <= len(pairs) < 4
  assert all(render(e) == "<image>Caption.<EOC><EOS>" for e in pairs)
  assert preprocess.task_stats("cut_pairs").counts().get("corrupt_tar") == 1
  np.testing.assert_array_equal([image_colours(e)[0] for e in pairs], COLOURS[:len(pairs)])


def test_a_mixture_over_bad_files_trains_on_and_reports_the_counts(tmp_path):
  for i, colour in enumerate(COLOURS[:2]):
    (tmp_path / f"{i}.png").write_bytes(encoded(colour))
  (tmp_path / "docs.jsonl").write_text("\n".join([
      json.dumps(doc(0, "Good.", 1, "Good too.")), "not json",
      json.dumps(doc("missing.png", "Gone.")), json.dumps(doc(1, "Fine."))]))
  config = load_config("tiny")
  config.data.tasks = {
      "synthetic_pairs": dict(weight=1.0, batch_size=2, max_length=32, max_images=1),
      "config_docs": dict(weight=1.0, batch_size=2, max_length=64, max_images=2,
                          kind="interleaved", source=dict(format="jsonl",
                                                          files=str(tmp_path / "*.jsonl")))}
  iterator = mixtures.make_iterator(config)
  for _ in range(3):  # Six documents: the file goes round three times and the run goes on.
    batch = next(iterator)["config_docs"]
    assert batch["tokens"].shape == (2, 64)
  counts = preprocess.task_stats("config_docs").counts()
  assert counts["corrupt_record"] >= 3 and counts["missing_image_file"] >= 3
  assert "config_docs: data: corrupt_record=" in iterator.report()
