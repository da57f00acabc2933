"""IDEFICS import: transformers' IdeficsForVisionText2Text from small random configs (both
alpha types, q/k norms on and off), saved with save_pretrained, converted through the CLI, and
compared logit by logit on interleaved sequences (several images, text before the first, an
EOS inside a packed sequence, a padded row); greedy decoding against transformers'."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tokenizers

import flamingo_jax
from flamingo_jax import sharding
from flamingo_jax.checkpoints import idefics as importer
from flamingo_jax.configs import base
from flamingo_jax.decode import encode, generate
from flamingo_jax.flamingo import factory

from test_import_open_flamingo import assert_sharded, randomize
from test_import_vision import convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.models.idefics import processing_idefics  # pylint: disable=g-import-not-at-top

VOCAB = 100  # The LLaMA tokenizer's size; the two added tokens are IDEFICS's additional rows.
EOS, FAKE, IMAGE = VOCAB - 1, VOCAB, VOCAB + 1
NUM_IMAGES, SIZE = 3, 32
F, I = FAKE, IMAGE
# An EOS inside the first (packed) sequence: the text after it sees no image until the next.
# The second is left-padded (0s), with text before its first image and one image fewer.
TOKENS = np.array([[F, I, F, 5, 6, 7, F, I, F, 8, EOS, 9, 10, F, I, F, 11, 12],
                   [0, 0, 0, 3, 4, F, I, F, 5, 6, 7, 8, F, I, F, 9, 10, 11]])
VALID = np.array([[1] * 18, [0] * 3 + [1] * 15])


def tokenizer(directory):
  """A word-level tokenizer of VOCAB words (the last EOS) and IDEFICS's two added tokens."""
  vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"</s>": EOS}
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>")
  fast.add_special_tokens({"additional_special_tokens": ["<fake_token_around_image>",
                                                         "<image>"]})
  assert fast.convert_tokens_to_ids(["<fake_token_around_image>", "<image>"]) == [FAKE, IMAGE]
  fast.save_pretrained(directory)
  return fast


def reference_model(alpha_type: str, qk_norms: bool, seed: int = 0, vocab_size: int = VOCAB,
                    eos: int = EOS):
  """A float32 IdeficsForVisionText2Text with every parameter drawn at random (`randomize`)."""
  config = transformers.IdeficsConfig(
      vocab_size=vocab_size, additional_vocab_size=2, hidden_size=64, intermediate_size=96,
      num_hidden_layers=4, num_attention_heads=4, cross_layer_interval=2,
      alpha_type=alpha_type, qk_layer_norms=qk_norms, use_resampler=True,
      bos_token_id=1, eos_token_id=eos, pad_token_id=0,
      vision_config=dict(embed_dim=32, image_size=SIZE, intermediate_size=48, patch_size=8,
                         num_hidden_layers=2, num_attention_heads=4),
      perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=2,
                            resampler_n_heads=2, resampler_head_dim=8,
                            qk_layer_norms_perceiver=qk_norms))
  return randomize(transformers.IdeficsForVisionText2Text(config).eval(), seed)


def inputs(fast_tokenizer, seed: int = 0):
  """(pixel values [B, N, 3, S, S], IDEFICS's image attention mask [B, L, N]) as its processor
  makes them: each row's images in order, a missing one zeros."""
  pixels = np.random.default_rng(seed).normal(size=(2, NUM_IMAGES, 3, SIZE, SIZE))
  pixels[1, 2] = 0
  ids = torch.from_numpy(TOKENS).long()
  incremental, _ = processing_idefics.image_attention_mask_for_packed_input_ids(
      ids, fast_tokenizer, "pt")
  mask = processing_idefics.incremental_to_binary_attention_mask(incremental, "pt",
                                                                 num_classes=NUM_IMAGES)
  return pixels.astype(np.float32), mask


def reference_logits(model, pixels, image_mask) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(TOKENS).long(),
                 attention_mask=torch.from_numpy(VALID), pixel_values=torch.from_numpy(pixels),
                 image_attention_mask=image_mask).logits.numpy()


def ours_logits(model, params, pixels) -> np.ndarray:
  images = jnp.asarray(pixels.transpose(0, 1, 3, 4, 2)[:, :, None])  # [B, N, 1, S, S, 3]
  positions = np.where(VALID, np.cumsum(VALID, axis=1) - 1, -1).astype(np.int32)
  return np.asarray(jax.jit(model.apply)({"params": params}, images, jnp.asarray(TOKENS),
                                         jnp.asarray(positions)))


def convert_idefics(tmp_path, alpha_type, qk_norms):
  """(transformers model, its tokenizer, the converted (model, params, config), stdout)."""
  reference = reference_model(alpha_type, qk_norms)
  reference.save_pretrained(tmp_path / "hf")
  fast = tokenizer(tmp_path / "hf")
  stdout = convert("--from=idefics", f"--path={tmp_path / 'hf'}", f"--out={tmp_path / 'out'}")
  return reference, fast, flamingo_jax.load(tmp_path / "out"), stdout


@pytest.mark.slow
@pytest.mark.parametrize("alpha_type,qk_norms", [("float", False), ("vector", True)])
def test_logits_match_transformers(alpha_type, qk_norms, tmp_path):
  """The CLI's checkpoint: every tensor of the full state_dict() used (but the pooled output's
  LayerNorm), the model section IDEFICS's, logits within 1e-4 on every real token."""
  reference, fast, (model, params, config), stdout = convert_idefics(tmp_path, alpha_type,
                                                                     qk_norms)
  assert "missing: 0\n  unexpected: 0\n  initialised: 0" in stdout
  report = importer.import_idefics(tmp_path / "hf", config)[1]
  assert set(report.ignored) == {"model.vision_model.post_layernorm.weight",
                                 "model.vision_model.post_layernorm.bias"}
  c = config.model
  assert (c.media_token_id, c.eoc_token_id, c.xattn.media_reset_token_id) == (IMAGE, EOS, EOS)
  assert (c.xattn.start, c.xattn.every, c.xattn.gate) == (
      0, 2, "vector" if alpha_type == "vector" else "scalar")
  assert c.xattn.qk_norm == ("rms" if qk_norms else "none")
  assert c.resampler.qk_norm == ("layer" if qk_norms else "none")
  pixels, image_mask = inputs(fast)
  theirs = reference_logits(reference, pixels, image_mask)
  ours = ours_logits(model, params, pixels)
  assert theirs.shape == ours.shape == (2, 18, VOCAB + 2)
  valid = VALID.astype(bool)
  np.testing.assert_allclose(ours[valid], theirs[valid], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_greedy_decoding_matches_transformers(tmp_path):
  """transformers' generate and the library's cached greedy decoding give the same tokens on a
  prompt of two images with an EOS between them."""
  reference, fast, (model, params, _), _ = convert_idefics(tmp_path, "float", True)
  pixels, image_mask = inputs(fast, seed=1)
  prompt = TOKENS[:1, :13]
  with torch.no_grad():
    theirs = reference.generate(
        input_ids=torch.from_numpy(prompt).long(), pixel_values=torch.from_numpy(pixels[:1]),
        image_attention_mask=image_mask[:1, :13], max_new_tokens=8, do_sample=False,
        eos_token_id=EOS, pad_token_id=0).numpy()[0, 13:]
  visual = encode(model, params, jnp.asarray(pixels[:1].transpose(0, 1, 3, 4, 2)[:, :, None]))
  ours = np.asarray(generate(model, params, visual, jnp.asarray(prompt), 8, stop_token=EOS))[0]
  assert len(theirs) >= 2
  np.testing.assert_array_equal(ours[:len(theirs)], theirs)


def test_import_places_every_parameter_on_the_mesh(tiny_config, tmp_path):
  """On the 8-device CPU mesh (fsdp 2 x tensor 4): each tensor is read and placed with its
  sharding, the values those of the import on one device."""
  reference_model("vector", True).save_pretrained(tmp_path)
  tokenizer(tmp_path)
  config = importer.idefics_config(tiny_config, tmp_path)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=4)))
  flat = factory.unscanned(config)
  shapes, axes = factory.abstract_params_and_axes(factory.build_model(flat), flat)
  shardings = sharding.shardings(axes, shapes, mesh, base.PARTITIONING_RULES)
  placed, _ = importer.import_idefics(tmp_path, config, shardings)
  plain, _ = importer.import_idefics(tmp_path, config)
  jax.tree.map(assert_sharded, placed, shardings)
  jax.tree.map(np.testing.assert_array_equal, placed, plain)
  gate = placed["gated_xattn_0"]["attention_gate"]  # [64] features over the 2 fsdp devices.
  assert {s.data.shape for s in gate.addressable_shards} == {(32,)}


def test_config_refuses_what_it_cannot_express(tiny_config, tmp_path):
  reference = reference_model("float", False)
  reference.save_pretrained(tmp_path)
  tokenizer(tmp_path)
  config = importer.idefics_config(tiny_config, tmp_path)
  assert config.model.xattn.mlp_ratio * 64 == 96 and config.model.vision.keep_class_token
  for change, message in ((dict(use_resampler=False), "use_resampler=False"),
                          (dict(tie_word_embeddings=True), "tied embeddings"),
                          (dict(cross_layer_interval=3), "not a multiple"),
                          (dict(alpha_type="matrix"), "alpha_type")):
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(hf | change))
    with pytest.raises(ValueError, match=message):
      importer.idefics_config(tiny_config, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf))
