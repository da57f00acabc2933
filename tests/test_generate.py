"""The generate CLI's Flamingo mode, on the tiny config's random checkpoint (its GGUF mode, with
SmolLM2: test_import_gguf.py)."""

import sys

from absl.testing import flagsaver
import numpy as np
from PIL import Image
import pytest
import seqio

import flamingo_jax
from flamingo_jax import generate
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.lm.model import DecoderLM

from multihost import run_processes
from test_flamingo import open_gates


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


def test_a_text_only_prompt_continues_as_the_frozen_lm_until_the_gates_open(
    tmp_path, tiny_config, tiny_model):
  """No <image>, no --images: at initialisation (every tanh gate 0) a Flamingo checkpoint
  continues a prompt as its frozen LM alone does; sharded over an fsdp x tensor mesh too."""
  model, params = tiny_model
  flamingo_jax.save(tmp_path / "ckpt", params, tiny_config)
  vocabulary = seqio.ByteVocabulary()
  lm = DecoderLM(lm_config(tiny_config.model))
  expected = generate.complete(lm, params["lm"], None, generate.opening(vocabulary)
                               + vocabulary.encode("a cat sat"), 8, stop_token=-1)
  for mesh in [(), ("1", "4", "2")]:
    setup = generate.flamingo_generation(str(tmp_path / "ckpt"), "a cat sat", [], mesh)
    flamingo, loaded, visual, tokens, _, _ = setup
    assert visual.shape[1] == 0
    np.testing.assert_array_equal(
        generate.complete(flamingo, loaded, visual, tokens, 8, stop_token=-1), expected)


@pytest.mark.slow
def test_two_processes_generate_as_one(tmp_path, tiny_config, tiny_model):
  """--multihost as 2 processes x 2 CPU devices, the parameters split fsdp x tensor across
  them: host 0 prints what 1 process x 4 devices prints, host 1 nothing."""
  flamingo_jax.save(tmp_path / "ckpt", open_gates(tiny_model[1]), tiny_config)
  path = str(tmp_path / "a.png")
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)).save(path)
  argv = [sys.executable, "-m", "flamingo_jax.generate", f"--checkpoint={tmp_path / 'ckpt'}",
          "--prompt=<image>Output: a cat.<EOC><image>Output:", f"--images={path},{path}",
          "--max_new_tokens=8", "--mesh=1,2,2"]
  # The last line: gloo's C++ prints its connections on the same stdout.
  one, = run_processes(argv, num_processes=1, devices_per_process=4, timeout=300)
  host0, host1 = run_processes(argv, num_processes=2, devices_per_process=2, timeout=300)
  assert host0.stdout.splitlines()[-1] == one.stdout.splitlines()[-1]
  assert all(line.startswith("[Gloo]") or "Gloo" in line for line in host1.stdout.splitlines())
