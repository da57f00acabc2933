"""Image decoding and preprocessing with the paper's filters; bad input is counted, not fatal.

Rules (each a counter in `DataStats`):
- corrupt_image: bytes PIL cannot decode -> the image is dropped.
- oversized_image: more than `max_pixels` pixels, read from the header before decoding (a
  decompression bomb must not take the host down) -> dropped.
- small_image / extreme_aspect: under 64 px on a side or aspect ratio over 3 (the paper's M3W
  filter) -> dropped.
"""

import collections
import dataclasses
import io
import threading
import warnings

import numpy as np
from PIL import Image

MIN_SIDE = 64
MAX_ASPECT = 3.0
MAX_PIXELS = 50_000_000


class DataStats:
  """Thread-safe counts of skipped or repaired input, by reason."""

  def __init__(self):
    self._counts = collections.Counter()
    self._lock = threading.Lock()

  def count(self, reason: str, n: int = 1) -> None:
    with self._lock:
      self._counts[reason] += n

  def counts(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)

  def report(self) -> str:
    counts = self.counts()
    if not counts:
      return "data: no input skipped or repaired"
    return "data: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


@dataclasses.dataclass(frozen=True)
class ImageFilter:
  min_side: int = MIN_SIDE
  max_aspect: float = MAX_ASPECT
  max_pixels: int = MAX_PIXELS


def decode(data: bytes, stats: DataStats, rules: ImageFilter = ImageFilter()):
  """Encoded bytes -> uint8 [H, W, 3], or None (counted) when a rule drops the image."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      width, height = image.size
      if width * height > rules.max_pixels:
        stats.count("oversized_image")
        return None
      pixels = np.asarray(image.convert("RGB"))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
          Image.DecompressionBombWarning):
    stats.count("corrupt_image")
    return None
  if min(width, height) < rules.min_side:
    stats.count("small_image")
    return None
  if max(width, height) > rules.max_aspect * min(width, height):
    stats.count("extreme_aspect")
    return None
  return pixels


def resize_and_crop(image: np.ndarray, size: int, mode: str = "shorter_side") -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [size, size, 3].

  mode "shorter_side": scale the shorter side to `size` (bicubic) and crop the centre (CLIP,
  OpenCLIP, NFNet); "square": resize straight to size x size (SigLIP).
  """
  pil = Image.fromarray(image)
  if mode == "square":
    return np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
  if mode != "shorter_side":
    raise ValueError(f"Unknown resize mode {mode!r}; expected 'shorter_side' or 'square'.")
  width, height = pil.size
  scale = size / min(width, height)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  pil = pil.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left, top = (new_w - size) // 2, (new_h - size) // 2
  return np.asarray(pil.crop((left, top, left + size, top + size)))


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
  """uint8 [..., 3] -> float32, scaled to [0, 1] then standardised per channel."""
  return ((image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32))
          / np.asarray(std, np.float32))
