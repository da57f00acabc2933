"""Token layout of the paper's training sequences (section 2.4, appendix A.3), in plain numpy.

A document is a list of pieces in reading order: `IMAGE` or a list of text token ids. It becomes
`<BOS> <image> text <EOC> <image> text <EOC> ... <EOS>`: <BOS> where the vocabulary has one,
`<image>` where an image sits, `<EOC>` before every `<image>` that follows text and at the end
of the document. A pair is the document
`[IMAGE, caption]`: `<BOS> <image> caption <EOC> <EOS>`.

Targets are the inputs shifted by one; a position's loss weight is 0 on padding and where the
target is `<image>` (where images go is given, never predicted).
"""

import dataclasses

import numpy as np

IMAGE = None  # The piece that stands for an image.


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  media: int  # <image>
  eoc: int    # <EOC>
  eos: int
  pad: int = 0
  bos: int | None = None


def layout(pieces: list, ids: SpecialIds) -> np.ndarray:
  """int32 [n]: the token ids of a whole document."""
  tokens, after_text = [] if ids.bos is None else [ids.bos], False
  for piece in pieces:
    if piece is IMAGE:
      if after_text:
        tokens.append(ids.eoc)
      tokens.append(ids.media)
      after_text = False
    elif len(piece):
      tokens.extend(piece)
      after_text = True
  if after_text:
    tokens.append(ids.eoc)
  tokens.append(ids.eos)
  return np.asarray(tokens, np.int32)


def window(sequence: np.ndarray, ids: SpecialIds, max_length: int, max_images: int,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, int, int]:
  """The at most max_length + 1 tokens that one training example reads.

  A longer sequence is cut to a window that starts at the beginning, or with `rng` at a random
  position (the paper's random subsequence of an M3W document): uniform over the starts whose
  window shows at least one `<image>` among its max_length inputs, so that no window of a
  document with images is text alone. The window then ends before its (max_images + 1)-th
  `<image>`: text after a dropped image would otherwise be credited to the image before it.

  Returns (tokens, first, cut): the window shows the document's images first, first + 1, ...;
  `cut` counts the images in the window dropped by the cap.
  """
  span = max_length + 1
  start = 0
  if rng is not None and len(sequence) > span:
    start = int(rng.choice(starts_showing_an_image(sequence, ids.media, max_length)))
  tokens = sequence[start:start + span]
  media = np.flatnonzero(tokens == ids.media)
  if len(media) > max_images:
    tokens = tokens[:media[max_images]]
  first = int(np.sum(sequence[:start] == ids.media))
  return tokens, first, max(0, len(media) - max_images)


def starts_showing_an_image(sequence: np.ndarray, media: int, max_length: int) -> np.ndarray:
  """int [k]: the starts of the max_length + 1 token windows of a longer sequence whose first
  max_length tokens (the inputs) hold an `<image>`."""
  positions = np.flatnonzero(sequence == media)
  if not len(positions):
    raise ValueError("A sequence without <image> has no window that shows one; documents "
                     "without images are dropped before (preprocess: no_images).")
  starts = np.arange(len(sequence) - max_length)
  # The first image at or after each start is an input of that start's window.
  following = np.searchsorted(positions, starts)
  nearest = positions[np.minimum(following, len(positions) - 1)]
  return starts[(following < len(positions)) & (nearest < starts + max_length)]


def pad_example(tokens: np.ndarray, ids: SpecialIds, max_length: int) -> dict:
  """A window of at most max_length + 1 tokens -> tokens / targets int32 [max_length] (targets
  are the inputs shifted by one) and weights float32 [max_length], 0 on padding and on
  `<image>` targets."""
  inputs, targets = tokens[:-1], tokens[1:]
  pad = max_length - len(inputs)
  weights = (targets != ids.media).astype(np.float32)
  return dict(tokens=np.pad(inputs, (0, pad), constant_values=ids.pad),
              targets=np.pad(targets, (0, pad), constant_values=ids.pad),
              weights=np.pad(weights, (0, pad)))
