"""The generate CLI's Flamingo mode, on the tiny config's random checkpoint (its GGUF mode, with
SmolLM2: test_import_gguf.py)."""

from absl.testing import flagsaver
import numpy as np
from PIL import Image
import pytest
import seqio

import flamingo_jax
from flamingo_jax import generate


def test_prompt_tokens_place_media_and_eoc():
  vocabulary = seqio.ByteVocabulary()  # Bytes at their value + 3.
  special = {"<image>": 259, "<EOC>": 260}
  assert generate.prompt_tokens("<image>ab<EOC><image>c", vocabulary, special) == [
      259, ord("a") + 3, ord("b") + 3, 260, 259, ord("c") + 3]


def test_flamingo_mode_prints_a_continuation(tmp_path, tiny_config, tiny_model, capsys):
  flamingo_jax.save(tmp_path / "ckpt", tiny_model[1], tiny_config)
  rng = np.random.default_rng(0)
  paths = []
  for i in range(2):  # Neither square nor the tower's size: resized and cropped.
    paths.append(str(tmp_path / f"{i}.png"))
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), np.uint8)).save(paths[-1])
  with flagsaver.flagsaver():
    generate.FLAGS(["generate", f"--checkpoint={tmp_path / 'ckpt'}",
                    "--prompt=<image>Output: a cat.<EOC><image>Output:",
                    f"--images={','.join(paths)}", "--max_new_tokens=8"])
    generate.main([])
  assert capsys.readouterr().out.endswith("\n")  # Printed; random weights: any text.


def test_flamingo_mode_wants_one_image_per_media_token():
  with pytest.raises(ValueError, match="2 <image>s and --images names 1 files"):
    generate.flamingo_generation("unread", "<image>a<image>b", ["a.png"])
