"""Image decoding rules: every bad image is dropped and counted; good ones are preprocessed."""

import io

import numpy as np
import pytest
from PIL import Image

from flamingo_jax.data.images import DataStats, ImageFilter, decode, normalize, resize_and_crop


def encode(width, height, fmt="PNG", colour=(200, 30, 30)):
  buffer = io.BytesIO()
  Image.new("RGB", (width, height), colour).save(buffer, format=fmt)
  return buffer.getvalue()


def test_good_image_decodes_to_rgb():
  stats = DataStats()
  pixels = decode(encode(100, 80, "JPEG"), stats)
  assert pixels.shape == (80, 100, 3) and pixels.dtype == np.uint8
  assert stats.counts() == {}


@pytest.mark.parametrize("data,reason", [
    (b"not an image at all", "corrupt_image"),
    (encode(100, 100)[:40], "corrupt_image"),
    (encode(63, 100), "small_image"),
    (encode(400, 100), "extreme_aspect"),
    (b"", "corrupt_image"),
])
def test_bad_images_are_dropped_and_counted(data, reason):
  stats = DataStats()
  assert decode(data, stats) is None
  assert stats.counts() == {reason: 1}


def test_oversized_image_is_rejected_from_its_header():
  stats = DataStats()
  assert decode(encode(300, 300), stats, ImageFilter(max_pixels=300 * 299)) is None
  assert stats.counts() == {"oversized_image": 1}
  assert "oversized_image=1" in stats.report()


def test_resize_modes():
  wide = np.zeros((100, 200, 3), np.uint8)
  wide[:, 90:110] = 255  # A bright band in the centre survives the centre crop.
  cropped = resize_and_crop(wide, 32)
  assert cropped.shape == (32, 32, 3)
  assert cropped[:, 16].mean() > 200 and cropped[:, 0].mean() < 10
  assert resize_and_crop(wide, 32, "square").shape == (32, 32, 3)
  with pytest.raises(ValueError, match="'sideways'"):
    resize_and_crop(wide, 32, "sideways")


def test_normalize():
  image = np.full((2, 2, 3), 255, np.uint8)
  out = normalize(image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
  np.testing.assert_allclose(out[0, 0], [1.0, 2.0, 1.0])
  assert out.dtype == np.float32
