"""The paper's sequence layout: <image>, <EOC>, <EOS>, truncation and loss weights."""

import numpy as np

from flamingo_jax.data.sequences import IMAGE, SpecialIds, attach_to_next, layout, training_example

IDS = SpecialIds(media=100, eoc=101, eos=1, pad=0)


def test_pair_reads_image_caption_eoc_eos():
  tokens, images = layout([IMAGE, [5, 6, 7]], IDS, max_images=5)
  np.testing.assert_array_equal(tokens, [100, 5, 6, 7, 101, 1])
  assert images == 1


def test_eoc_goes_before_every_image_that_follows_text_and_at_the_end():
  tokens, images = layout([[3], IMAGE, [4, 4], IMAGE, IMAGE, [5]], IDS, max_images=5)
  np.testing.assert_array_equal(tokens, [3, 101, 100, 4, 4, 101, 100, 100, 5, 101, 1])
  assert images == 3


def test_document_ends_before_the_image_past_the_limit():
  pieces = [IMAGE, [2, 2], IMAGE, [10], IMAGE, [20]]
  tokens, images = layout(pieces, IDS, max_images=2)
  np.testing.assert_array_equal(tokens, [100, 2, 2, 101, 100, 10, 101, 1])
  assert images == 2


def test_text_can_attach_to_the_next_image():
  pieces = [[7], IMAGE, [8], IMAGE, [9]]
  assert attach_to_next(pieces) == [IMAGE, [7], IMAGE, [8], [9]]
  assert attach_to_next([IMAGE, [8]]) == [IMAGE, [8]]


def test_training_example_shifts_pads_and_masks_image_targets():
  example = training_example([[3], IMAGE, [4, 5]], IDS, max_length=8, max_images=5)
  np.testing.assert_array_equal(example["tokens"], [3, 101, 100, 4, 5, 101, 0, 0])
  np.testing.assert_array_equal(example["targets"], [101, 100, 4, 5, 101, 1, 0, 0])
  np.testing.assert_array_equal(example["weights"], [1, 0, 1, 1, 1, 1, 0, 0])
  assert example["num_images"] == 1


def test_truncation_counts_only_the_images_kept():
  pieces = [IMAGE, [4] * 5, IMAGE, [5] * 5]
  example = training_example(pieces, IDS, max_length=6, max_images=5)
  np.testing.assert_array_equal(example["tokens"], [100, 4, 4, 4, 4, 4])
  assert example["num_images"] == 1
  assert example["tokens"].dtype == np.int32 and example["weights"].dtype == np.float32
