"""The paper's sequence layout: <image>, <EOC>, <EOS>, windows, image caps and loss weights."""

import numpy as np

from flamingo_jax.data.sequences import IMAGE, SpecialIds, layout, pad_example, window

IDS = SpecialIds(media=100, eoc=101, eos=1, pad=0)


def test_pair_reads_image_caption_eoc_eos():
  np.testing.assert_array_equal(layout([IMAGE, [5, 6, 7]], IDS), [100, 5, 6, 7, 101, 1])


def test_bos_opens_the_document_where_the_vocabulary_has_one():
  ids = SpecialIds(media=100, eoc=101, eos=1, pad=0, bos=2)
  np.testing.assert_array_equal(layout([IMAGE, [5]], ids), [2, 100, 5, 101, 1])


def test_eoc_goes_before_every_image_that_follows_text_and_at_the_end():
  tokens = layout([[3], IMAGE, [4, 4], IMAGE, IMAGE, [5]], IDS)
  np.testing.assert_array_equal(tokens, [3, 101, 100, 4, 4, 101, 100, 100, 5, 101, 1])


def test_window_ends_before_the_image_past_the_limit():
  sequence = layout([IMAGE, [2, 2], IMAGE, [10], IMAGE, [20]], IDS)
  tokens, first, cut = window(sequence, IDS, max_length=64, max_images=2)
  np.testing.assert_array_equal(tokens, [100, 2, 2, 101, 100, 10, 101])
  assert (first, cut) == (0, 1)


def test_random_window_is_a_subsequence_that_shows_an_image():
  # 12 images, each followed by 9 text tokens: windows of 21 tokens.
  sequence = layout([p for i in range(12) for p in (IMAGE, [i + 2] * 9)], IDS)
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(200):
    tokens, first, cut = window(sequence, IDS, max_length=20, max_images=5, rng=rng)
    start = next(s for s in range(len(sequence)) if
                 np.array_equal(sequence[s:s + len(tokens)], tokens))
    starts.add(start)
    media = np.flatnonzero(tokens == IDS.media)
    assert 1 <= len(media) <= 5 and cut == 0
    assert first == np.sum(sequence[:start] == IDS.media)
    # Text after the window's first image belongs to image `first + k`: its token is k + first + 2.
    assert tokens[media[0] + 1] == first + 2
  assert len(starts) > 50 and max(starts) <= np.flatnonzero(sequence == IDS.media)[-1]


def test_pad_example_shifts_pads_and_masks_image_targets():
  example = pad_example(layout([[3], IMAGE, [4, 5]], IDS), IDS, max_length=8)
  np.testing.assert_array_equal(example["tokens"], [3, 101, 100, 4, 5, 101, 0, 0])
  np.testing.assert_array_equal(example["targets"], [101, 100, 4, 5, 101, 1, 0, 0])
  np.testing.assert_array_equal(example["weights"], [1, 0, 1, 1, 1, 1, 0, 0])
  assert example["tokens"].dtype == np.int32 and example["weights"].dtype == np.float32


def test_truncation_keeps_only_the_images_whose_tokens_fit():
  sequence = layout([IMAGE, [4] * 5, IMAGE, [5] * 5], IDS)
  tokens, first, cut = window(sequence, IDS, max_length=6, max_images=5)
  np.testing.assert_array_equal(pad_example(tokens, IDS, 6)["tokens"], [100, 4, 4, 4, 4, 4])
  assert (first, cut, int(np.sum(tokens[:-1] == IDS.media))) == (0, 0, 1)
