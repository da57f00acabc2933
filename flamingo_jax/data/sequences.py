"""Token layout of the paper's training sequences (section 2.4, appendix A.3), in plain numpy.

A document is a list of pieces in reading order: `IMAGE` or a list of text token ids. It becomes
`<image> text <EOC> <image> text <EOC> ... <EOS>`: `<image>` where an image sits, `<EOC>` before
every `<image>` that follows text and at the end of the document. A pair is the document
`[IMAGE, caption]`: `<image> caption <EOC> <EOS>`.

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


def attach_to_next(pieces: list) -> list:
  """Moves each image tag before the text chunk that precedes it, so that text attends to the
  image after it instead of the one before (the paper picks either per M3W page with
  probability 1/2). [T0, I1, T1, I2, T2] -> [I1, T0, I2, T1, T2]."""
  out = []
  for piece in pieces:
    if piece is IMAGE and out and out[-1] is not IMAGE:
      out.insert(len(out) - 1, IMAGE)
    else:
      out.append(piece)
  return out


def layout(pieces: list, ids: SpecialIds, max_images: int) -> tuple[np.ndarray, int]:
  """Token ids of a document and the number of images it keeps.

  The document ends before its (max_images + 1)-th image: text after an image that is dropped
  would otherwise be credited to the image before it.
  """
  tokens, images, after_text = [], 0, False
  for piece in pieces:
    if piece is IMAGE:
      if images == max_images:
        break
      if after_text:
        tokens.append(ids.eoc)
      tokens.append(ids.media)
      images += 1
      after_text = False
    elif len(piece):
      tokens.extend(piece)
      after_text = True
  if after_text:
    tokens.append(ids.eoc)
  tokens.append(ids.eos)
  return np.asarray(tokens, np.int32), images


def training_example(pieces: list, ids: SpecialIds, max_length: int, max_images: int) -> dict:
  """Fixed-size model inputs from a document.

  Returns tokens / targets int32 [max_length], weights float32 [max_length], and num_images:
  how many of the document's first images the kept tokens refer to (images past the length
  limit are cut with their `<image>` tokens).
  """
  sequence, _ = layout(pieces, ids, max_images)
  sequence = sequence[:max_length + 1]
  inputs, targets = sequence[:-1], sequence[1:]
  pad = max_length - len(inputs)
  weights = (targets != ids.media).astype(np.float32)
  return dict(
      tokens=np.pad(inputs, (0, pad), constant_values=ids.pad),
      targets=np.pad(targets, (0, pad), constant_values=ids.pad),
      weights=np.pad(weights, (0, pad)),
      num_images=int(np.sum(inputs == ids.media)))
