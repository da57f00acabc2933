"""Each on-disk format, written here as small real files, read back through seqio Tasks into
model examples: text in the paper's layout, images in order, per the raw schemas."""

import base64
import io
import json
import tarfile

import av
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from flamingo_jax.data import preprocess, sources, tasks

VOCAB = seqio.ByteVocabulary()
IDS = preprocess.special_ids(VOCAB)
MEDIA = preprocess.MediaSpec(image_size=32)
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200),
           (200, 30, 200), (90, 90, 90)]


def encoded(colour, size=(80, 96), fmt="PNG") -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", size, colour).save(buffer, fmt)
  return buffer.getvalue()


def mp4(colours: list, fps: int = 10, size: int = 64) -> bytes:
  """A real H.264 video: frame k is flat colours[k]."""
  buffer = io.BytesIO()
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width = stream.height = size
    stream.pix_fmt = "yuv420p"
    for colour in colours:
      frame = np.full((size, size, 3), colour, np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return buffer.getvalue()


def render(example: dict) -> str:
  """The example's token window (first input, then every target of a real input) as text with
  <image>, <EOC> and <EOS> spelt out."""
  names = {IDS.media: "<image>", IDS.eoc: "<EOC>", IDS.eos: "<EOS>"}
  length = int(np.sum(example["tokens"] != IDS.pad))
  window = [int(t) for t in (example["tokens"][0], *example["targets"][:length])]
  out, text = [], []
  for t in window + [IDS.eos]:  # Text runs decode whole: UTF-8 characters span tokens.
    if t in names:
      out += [VOCAB.decode(text), names[t]]
      text = []
    else:
      text.append(t)
  return "".join(out[:-1])


def image_colours(example: dict) -> list:
  """The flat colour of each image the example shows (an all-zero slot ends the list)."""
  colours = []
  for media in example["images"]:
    if not media.any():
      break
    colours.append(tuple(int(v) for v in media[0, 0, 0]))
  return colours


def read(name: str, kind: str, source, max_length=64, max_images=5, media=MEDIA) -> list[dict]:
  tasks.register(name, kind, source, VOCAB, media, augment=preprocess.NO_AUGMENTATION)
  ds = seqio.get_mixture_or_task(name).get_dataset(
      sequence_length={"tokens": max_length, "images": max_images}, split="train", shuffle=False,
      seed=0)
  return list(ds.as_numpy_iterator())


DOCUMENT = "<image>First.<EOC><image>Second one.<EOC><EOS>"


def obelics(names):
  return {"texts": [None, "First.", None, "Second one."], "images": [names[0], None, names[1], None]}


def mmc4(names):
  return {"text_list": ["First.", "Second one."],
          "image_info": [{"image_name": names[0], "matched_text_index": 0},
                         {"image_name": names[1], "matched_text_index": 1}]}


def check_document(examples, count):
  assert len(examples) == count
  for example in examples:
    assert render(example) == DOCUMENT
    assert image_colours(example) == COLOURS[:2]
    assert example["images"].shape == (5, 1, 32, 32, 3) and example["images"].dtype == np.uint8
    assert example["tokens"].dtype == np.int32 and example["weights"].dtype == np.float32


def test_interleaved_jsonl_in_obelics_and_mmc4_form(tmp_path):
  (tmp_path / "img").mkdir()
  for i in range(2):
    (tmp_path / "img" / f"{i}.png").write_bytes(encoded(COLOURS[i]))
  names = ["img/0.png", "img/1.png"]
  lines = [json.dumps(obelics(names)), json.dumps(mmc4(names))]
  (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
  check_document(read("fmt_jsonl_doc", "interleaved", sources.Jsonl(str(tmp_path / "*.jsonl"))), 2)


def write_tar(path, samples: dict[str, dict[str, bytes]]):
  with tarfile.open(path, "w") as tar:
    for key, members in samples.items():
      for name, data in members.items():
        info = tarfile.TarInfo(f"{key}.{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def test_interleaved_webdataset_with_members_and_base64(tmp_path):
  images = {f"{i}.png": encoded(COLOURS[i]) for i in range(2)}
  inline = mmc4(["a", "b"])
  for info, data in zip(inline["image_info"], images.values()):
    info["image_base64"] = base64.b64encode(data).decode()
  write_tar(tmp_path / "docs-000.tar", {
      "doc0": {"json": json.dumps(obelics(list(images))).encode(), **images},
      "doc1": {"json": json.dumps(inline).encode()}})
  source = sources.WebDataset(str(tmp_path / "docs-*.tar"))
  check_document(read("fmt_wds_doc", "interleaved", source), 2)


def tf_example(features: dict) -> bytes:
  def feature(value):
    values = value if isinstance(value, list) else [value]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  return tf.train.Example(features=tf.train.Features(
      feature={k: feature(v) for k, v in features.items()})).SerializeToString()


def write_tfrecord(path, records: list[dict]):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(tf_example(record))


def test_interleaved_tfrecord(tmp_path):
  write_tfrecord(tmp_path / "docs.tfrecord", [
      {"images": [encoded(COLOURS[0]), encoded(COLOURS[1])],
       "texts": [b"", b"First.", b"Second one."]}])
  check_document(read("fmt_tfrecord_doc", "interleaved",
                      sources.TFRecord(str(tmp_path / "*.tfrecord"))), 1)


def check_pairs(examples, captions):
  assert [render(e) for e in examples] == [f"<image>{c}<EOC><EOS>" for c in captions]
  assert [image_colours(e) for e in examples] == [[c] for c in COLOURS[:len(captions)]]
  for example in examples:
    assert example["images"].shape == (1, 1, 32, 32, 3)


CAPTIONS = ["A red square.", "A green one.", "Blue."]


def test_pairs_webdataset_tfrecord_and_jsonl(tmp_path):
  write_tar(tmp_path / "pairs-000.tar", {
      f"{i:04d}": {"png": encoded(COLOURS[i]), "txt": c.encode()} for i, c in enumerate(CAPTIONS)})
  pairs = read("fmt_wds_pairs", "pair", sources.WebDataset(str(tmp_path / "pairs-*.tar")),
               max_images=1)
  check_pairs(pairs, CAPTIONS)

  write_tfrecord(tmp_path / "pairs.tfrecord", [
      {"image/encoded": encoded(COLOURS[i], fmt="JPEG"), "caption": c.encode()}
      for i, c in enumerate(CAPTIONS)])
  source = sources.TFRecord(str(tmp_path / "*.tfrecord"),
                            fields={"image": "image/encoded", "text": "caption"})
  jpeg = read("fmt_tfrecord_pairs", "pair", source, max_images=1)
  assert [render(e) for e in jpeg] == [f"<image>{c}<EOC><EOS>" for c in CAPTIONS]
  for example, colour in zip(jpeg, COLOURS):  # JPEG is lossy.
    np.testing.assert_allclose(example["images"][0, 0].mean((0, 1)), colour, atol=3)

  for i in range(3):
    (tmp_path / f"{i}.png").write_bytes(encoded(COLOURS[i]))
  (tmp_path / "pairs.jsonl").write_text("\n".join(
      json.dumps({"image": f"{i}.png", "caption": c}) for i, c in enumerate(CAPTIONS)))
  check_pairs(read("fmt_jsonl_pairs", "pair", sources.Jsonl(str(tmp_path / "pairs.jsonl")),
                   max_images=1), CAPTIONS)


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
  """A COCO-shaped TFDS dataset: an image and several captions."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, caption in enumerate(CAPTIONS):
      image = np.asarray(Image.new("RGB", (80, 80), COLOURS[i]))
      yield i, {"image": image, "captions": {"text": [caption, caption.upper()]}}


def test_pairs_from_a_tfds_builder_take_one_of_the_captions(tmp_path):
  TinyCaptions(data_dir=str(tmp_path)).download_and_prepare()
  source = sources.Tfds("tiny_captions:1.0.0", data_dir=str(tmp_path), text_key="captions/text")
  examples = read("fmt_tfds_pairs", "pair", source, max_images=1)
  assert [image_colours(e) for e in examples] == [[c] for c in COLOURS[:3]]
  texts = [render(e) for e in examples]
  for text, caption in zip(texts, CAPTIONS):
    assert text in (f"<image>{caption}<EOC><EOS>", f"<image>{caption.upper()}<EOC><EOS>")


def check_video(examples):
  # 10 FPS source frames k = 0..29 (k // 10 picks the colour); 2 FPS, 4 frames from the centre
  # of the 3 s clip: t = 0.5, 1.0, 1.5, 2.0 s -> source frames 5, 10, 15, 20.
  assert len(examples) == 2
  for example in examples:
    assert render(example) == "<image>A clip.<EOC><EOS>"
    frames = example["images"][0]
    assert frames.shape == (4, 32, 32, 3) and not example["images"][1:].any()
    expected = [COLOURS[k // 10] for k in (5, 10, 15, 20)]
    np.testing.assert_allclose(frames.mean((1, 2)), expected, atol=6)


VIDEO = mp4([COLOURS[k // 10] for k in range(30)])


def test_video_webdataset_and_tfrecord(tmp_path):
  write_tar(tmp_path / "clips-000.tar", {
      f"clip{i}": {"mp4": VIDEO, "txt": b"A clip."} for i in range(2)})
  media = preprocess.MediaSpec(image_size=32, fps=2.0, num_frames=4, random_clip=False)
  examples = read("fmt_wds_video", "video", sources.WebDataset(str(tmp_path / "clips-*.tar")),
                  max_images=2, media=media)
  check_video(examples)
  write_tfrecord(tmp_path / "clips.tfrecord", [{"video": VIDEO, "text": b"A clip."}] * 2)
  check_video(read("fmt_tfrecord_video", "video", sources.TFRecord(str(tmp_path / "*.tfrecord")),
                   max_images=2, media=media))


def test_the_papers_augmentations_happen_at_their_rates():
  left_red = np.zeros((80, 80, 3), np.uint8)
  left_red[:, :40] = (255, 0, 0)
  raw = {"image": encoded_array(left_red), "text": b"A caption."}
  augment = preprocess.Augmentation(space_prefix=0.5, flip=0.5, colour_jitter=0.2)
  stats = preprocess.task_stats("augment_test")
  spaces = flips = 0
  reds = set()
  for seed in range(200):
    example = preprocess.model_example(raw, "pair", MEDIA, VOCAB, 32, 1, stats,
                                       np.random.default_rng(seed), augment)
    text = render(example)
    assert text in ("<image>A caption.<EOC><EOS>", "<image> A caption.<EOC><EOS>")
    spaces += text.startswith("<image> ")
    image = example["images"][0, 0].astype(int)
    left, right = image[:, :8].mean((0, 1)), image[:, -8:].mean((0, 1))
    flipped = left[0] < right[0]  # Red moved to the right.
    flips += flipped
    red = right if flipped else left
    assert red[0] > 150 and red[1] < 60  # Jittered, still red.
    reds.add(tuple(red.round()))
  assert 70 < spaces < 130 and 70 < flips < 130 and len(reds) > 50
  assert not stats.counts()



def test_text_attached_to_the_next_image_keeps_its_place(tmp_path):
  # Attaching text to the next image is the model's mask (`attach_to_next`); the text stays in
  # reading order, and a page that opens with an image keeps one <image> token for it.
  stats = preprocess.task_stats("attach_test")
  for texts, read in [([b"1", b"2", b"3"], "1<EOC><image>2<EOC><image>3<EOC><EOS>"),
                      ([b"", b"A.", b"B."], "<image>A.<EOC><image>B.<EOC><EOS>")]:
    document = {"images": [encoded(COLOURS[0]), encoded(COLOURS[1])], "texts": texts}
    for rate in (0.0, 1.0):
      example = preprocess.model_example(document, "interleaved", MEDIA, VOCAB, 32, 5, stats,
                                         np.random.default_rng(0),
                                         preprocess.Augmentation(attach_to_next=rate))
      assert render(example) == read and image_colours(example) == COLOURS[:2]
      assert example["attach_to_next"] == bool(rate)
  pair = preprocess.model_example({"image": encoded(COLOURS[0]), "text": b"A."}, "pair", MEDIA,
                                  VOCAB, 32, 1, stats, np.random.default_rng(0),
                                  preprocess.Augmentation(attach_to_next=1.0))
  assert not pair["attach_to_next"]  # A pair's text follows its image.
  # Through a seqio Task at the paper's rate: about half the pages, the same text for all.
  (tmp_path / "img").mkdir()
  for i in range(2):
    (tmp_path / "img" / f"{i}.png").write_bytes(encoded(COLOURS[i]))
  (tmp_path / "docs.jsonl").write_text(
      (json.dumps(obelics(["img/0.png", "img/1.png"])) + "\n") * 40)
  tasks.register("fmt_attach", "interleaved", sources.Jsonl(str(tmp_path / "*.jsonl")), VOCAB,
                 MEDIA, augment=preprocess.Augmentation(space_prefix=0.0))
  examples = list(seqio.get_mixture_or_task("fmt_attach").get_dataset(
      sequence_length={"tokens": 32, "images": 5}, split="train", shuffle=False,
      seed=0).as_numpy_iterator())
  assert len(examples) == 40 and {render(e) for e in examples} == {DOCUMENT}
  assert 8 < sum(e["attach_to_next"] for e in examples) < 32


def test_every_window_of_a_long_document_shows_one_of_its_images():
  # 999 tokens, <image> at token 899: the 257-token windows that show it among their 256
  # inputs start in [644, 742] (the last start that fits); a start drawn uniformly over
  # [0, 742] would miss it 87% of the time.
  words = "".join(chr(ord("a") + i % 26) for i in range(898))
  document = {"images": [encoded(COLOURS[0])], "texts": [words.encode(), b"z" * 97]}
  stats = preprocess.task_stats("window_test")
  where = []
  for seed in range(300):
    example = preprocess.model_example(document, "interleaved", MEDIA, VOCAB, 256, 5, stats,
                                       np.random.default_rng(seed), preprocess.NO_AUGMENTATION)
    media = np.flatnonzero(example["tokens"] == IDS.media)
    assert len(media) == 1 and image_colours(example) == COLOURS[:1]
    where.append(int(media[0]))
  # The image's place in the window, 899 - start, spreads over all of [157, 255].
  assert min(where) == 157 and max(where) == 255 and len(set(where)) > 80
  assert not stats.counts()


def encoded_array(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "PNG")
  return buffer.getvalue()


def small_sentencepiece(tmp_path) -> seqio.SentencePieceVocabulary:
  import sentencepiece
  lines = [f"a {c} caption number {i}" for i in range(50) for c in ("red", "blue")]
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_prefix=str(tmp_path / "spm"), vocab_size=30,
      pad_id=0, eos_id=1, unk_id=2, bos_id=3, minloglevel=2)
  return seqio.SentencePieceVocabulary(str(tmp_path / "spm.model"))


def test_a_sentencepiece_vocabulary_opens_documents_with_bos(tmp_path):
  vocabulary = small_sentencepiece(tmp_path)
  ids = preprocess.special_ids(vocabulary)
  assert (ids.bos, ids.eos, ids.pad, ids.media) == (3, 1, 0, 30)
  raw = {"image": encoded(COLOURS[0]), "text": b"a red caption"}
  example = preprocess.model_example(raw, "pair", MEDIA, vocabulary, 32, 1,
                                     preprocess.task_stats("spm_test"), np.random.default_rng(0),
                                     preprocess.NO_AUGMENTATION)
  text_ids = vocabulary.encode("a red caption")
  n = len(text_ids) + 3  # <BOS> <image> text <EOC>, then <EOS> as the last target.
  np.testing.assert_array_equal(example["tokens"][:n], [3, 30, *text_ids, 31])
  assert example["targets"][n - 1] == 1 and example["weights"][0] == 0  # <image> is no target.


def test_the_space_prefix_changes_sentencepiece_ids(tmp_path):
  # SentencePiece's normaliser drops a leading space: " a red caption" encodes as
  # "a red caption", so the augmentation puts the lone "▁" piece in front of the ids.
  vocabulary = small_sentencepiece(tmp_path)
  assert vocabulary.encode(" a red caption") == vocabulary.encode("a red caption")
  space = vocabulary.tokenizer.piece_to_id("\u2581")
  raw = {"image": encoded(COLOURS[0]), "text": b"a red caption"}
  text_ids = vocabulary.encode("a red caption")
  plain, spaced = [3, 30, *text_ids, 31], [3, 30, space, *text_ids, 31]
  augment = preprocess.Augmentation(space_prefix=0.5)
  spaces = 0
  for seed in range(200):
    example = preprocess.model_example(raw, "pair", MEDIA, vocabulary, 32, 1,
                                       preprocess.task_stats("spm_space_test"),
                                       np.random.default_rng(seed), augment)
    tokens = example["tokens"][:int(np.sum(example["tokens"] != 0))].tolist()
    assert tokens in (plain, spaced)
    spaces += tokens == spaced
  assert 70 < spaces < 130


def test_the_space_prefix_refuses_a_vocabulary_it_cannot_change():
  class Trimming(seqio.ByteVocabulary):
    def _encode(self, s):
      return super()._encode(s.lstrip())

  with pytest.raises(ValueError, match="space-prefix"):
    preprocess.prepare(tf.data.Dataset.from_tensors({"image": b"", "text": b"a"}),
                       {"tokens": 8, "images": 1}, preprocess.output_features(Trimming()),
                       kind="pair", media=MEDIA, task="trimming_test")
