"""OpenFlamingo import: a tiny random OpenFlamingo (the `open-flamingo` package's model on a
transformers LLaMA or MPT and an open_clip ViT), saved as its state dict, imported, and compared
logit by logit on interleaved sequences of several images each."""

import json
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import flamingo_jax
from flamingo_jax.flamingo import factory
from flamingo_jax.configs import base
from flamingo_jax.checkpoints import flamingo_sources as importer
from flamingo_jax.checkpoints.open_flamingo import flamingo_token_ids
from flamingo_jax import sharding
from test_import_vision import convert, word_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# open_clip and open-flamingo come with `make test`: their absence fails rather than skips.
import open_clip  # pylint: disable=g-import-not-at-top,g-bad-import-order
from open_flamingo.src import flamingo as of_flamingo  # pylint: disable=g-import-not-at-top
from open_flamingo.src import flamingo_lm as of_lm  # pylint: disable=g-import-not-at-top
from open_flamingo.src import utils as of_utils  # pylint: disable=g-import-not-at-top

VOCAB = 100  # The LM tokenizer's size: OpenFlamingo's <|endofchunk|> is 100, <image> 101.
EOC, IMAGE = VOCAB, VOCAB + 1
OPEN_CLIP_CFG = dict(
    embed_dim=16, quick_gelu=True,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8),
    text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))
# model_type -> (transformers config and causal LM, its decoder layers in OpenFlamingo's terms).
LMS = {
    "llama": (transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2), transformers.LlamaForCausalLM,
              "model.layers"),
    "mpt": (transformers.MptConfig(vocab_size=VOCAB, d_model=64, n_heads=4, n_layers=4,
                                   max_seq_len=32), transformers.MptForCausalLM,
            "transformer.blocks"),
}
# Two sequences with 3 images each, OpenFlamingo's way: <image>text<|endofchunk|>, and text
# before the first image.
TOKENS = np.array([[IMAGE, 5, 6, EOC, IMAGE, 7, 8, 9, EOC, IMAGE, 3, 4, 11, EOC],
                   [1, 2, IMAGE, 5, EOC, IMAGE, 6, 7, EOC, 2, IMAGE, 9, 9, EOC]])


def randomize(module, seed):
  """Every parameter at random, norm scales around 1, biases around 0, and the tanh gates
  (OpenFlamingo's `*_gate`, IDEFICS's `alpha_*`) around 0.5, where both start them at 0."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith("_gate") or ".alpha_" in name:
        p.copy_(0.5 + 0.2 * torch.randn_like(p))
      elif p.ndim == 1:
        p.copy_(float(name.endswith("weight")) + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return module


def tiny_open_flamingo(family: str, tmp_path, pad: bool, tower_ln_post: bool = False):
  """(OpenFlamingo model, the LM's directory, the CLIP model): the LM is saved before
  OpenFlamingo resizes its vocabulary, as a user has it; `pad`: the tokenizer lacked a pad
  token, so OpenFlamingo added <PAD> as a third row. The tower gives its tokens before ln_post
  as open_clip 2.16-2.22 did (final_ln_after_pool keeps this open_clip from normalising them),
  or, `tower_ln_post`, after it, as open_clip >= 2.23 does by default."""
  directory = tmp_path / "open_clip_config"
  directory.mkdir()
  (directory / "open_clip_config.json").write_text(json.dumps(dict(model_cfg=OPEN_CLIP_CFG)))
  clip = randomize(open_clip.create_model(f"local-dir:{directory}"), 1)
  clip.visual.output_tokens = True
  clip.visual.final_ln_after_pool = not tower_ln_post
  config, model_cls, layers = LMS[family]
  lm = randomize(model_cls(config), 2)
  lm.save_pretrained(tmp_path / "lm")
  of_utils.extend_instance(lm, of_lm.FlamingoLMMixin)
  lm.set_decoder_layers_attr_name(layers)
  lm.resize_token_embeddings(VOCAB + 2 + pad)
  model = of_flamingo.Flamingo(clip, lm, eoc_token_id=EOC, media_token_id=IMAGE, vis_dim=32,
                               cross_attn_every_n_layers=2)
  # OpenFlamingo trains the resampler, the gated layers and the input embedding table.
  for module in (model.perceiver, model.lang_encoder.gated_cross_attn_layers,
                 model.lang_encoder.get_input_embeddings()):
    randomize(module, 3)
  return model.eval(), tmp_path / "lm", clip


def reference(model, images: np.ndarray) -> np.ndarray:
  """OpenFlamingo's logits [B, L, V + 2 or 3]; images [B, M, H, W, 3]."""
  vision_x = torch.from_numpy(images).permute(0, 1, 4, 2, 3)[:, :, None]  # [B, M, 1, 3, H, W]
  with torch.no_grad():
    return model(vision_x, torch.from_numpy(TOKENS)).logits.numpy()


def ours(config, params, images: np.ndarray) -> np.ndarray:
  """flamingo-jax's logits, its columns in OpenFlamingo's order."""
  model = factory.build_model(config)
  logits = jax.jit(model.apply)({"params": params}, jnp.asarray(images[:, :, None]),
                                jnp.asarray(flamingo_token_ids(TOKENS, VOCAB)))
  columns = flamingo_token_ids(np.arange(logits.shape[-1]), VOCAB)
  return np.asarray(logits)[..., columns]


def assert_sharded(x, sharding):
  assert x.sharding == sharding, (x.shape, x.sharding, sharding)


def random_images(seed=0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(2, 3, 32, 32, 3)).astype(np.float32)


def test_llama_state_dict_matches_open_flamingo(tiny_config, tmp_path):
  """The whole state_dict() of an OpenFlamingo on an untied LLaMA whose tokenizer had no pad
  token: every tensor from the one file, logits within 1e-4 on all 103 columns. Then only what
  OpenFlamingo's training saves, the rest from the LM directory and the CLIP checkpoint: the
  untied head's rows of the new tokens were never saved, and start fresh."""
  model, lm_path, clip = tiny_open_flamingo("llama", tmp_path, pad=True)
  torch.save(model.state_dict(), tmp_path / "of.pt")
  config = importer.open_flamingo_config(tiny_config, tmp_path / "of.pt", lm_path,
                                         vocab_size=VOCAB, open_clip_cfg=OPEN_CLIP_CFG)
  c = config.model
  assert (c.xattn.start, c.xattn.every, c.lm.num_extra_tokens) == (1, 2, 3)
  assert (c.media_token_id, c.eoc_token_id) == (VOCAB, VOCAB + 1)
  assert not c.resampler.temporal_embedding and not c.xattn.kv_norm
  assert c.vision.activation == "quick_gelu"
  params, report = importer.import_open_flamingo(tmp_path / "of.pt", config, lm_path)
  images = random_images()
  theirs = reference(model, images)
  assert theirs.shape == (2, 14, VOCAB + 3)
  assert np.abs(ours(config, params, images) - theirs).max() < 1e-4
  assert not (report.missing or report.unexpected or report.initialised)
  assert any(k.startswith("lang_encoder.old_decoder_blocks.") for k in report.ignored)
  # The LM directory's tensors that the OpenFlamingo file has too.
  assert "model.embed_tokens.weight" in report.ignored

  trained = {k: v for k, v in model.state_dict().items()
             if k.startswith("perceiver.") or "gated_cross_attn_layer." in k
             or k == "lang_encoder.model.embed_tokens.weight"}
  torch.save(trained, tmp_path / "released.pt")
  torch.save(clip.state_dict(), tmp_path / "clip.pt")
  params, report = importer.import_open_flamingo(tmp_path / "released.pt", config, lm_path,
                                                 tmp_path / "clip.pt")
  assert report.initialised == ("lm/extra_unembedding",) and not report.missing
  assert "visual.proj" in report.ignored
  np.testing.assert_allclose(ours(config, params, images)[..., :VOCAB], theirs[..., :VOCAB],
                             atol=1e-4, rtol=0)

  # On the 8-device CPU mesh (fsdp 2 x tensor 4), every parameter, the fresh one too, arrives
  # with its sharding.
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=4)))
  flat = factory.unscanned(config)
  flamingo = factory.build_model(flat)
  shapes, axes = factory.abstract_params_and_axes(flamingo, flat)
  shardings = sharding.shardings(axes, shapes, mesh, base.PARTITIONING_RULES)
  sharded, _ = importer.import_open_flamingo(tmp_path / "released.pt", config, lm_path,
                                             tmp_path / "clip.pt", shardings)
  jax.tree.map(assert_sharded, sharded, shardings)
  jax.tree.map(np.testing.assert_array_equal, sharded, params)


def test_mpt_released_checkpoint_matches_open_flamingo(tiny_config, tmp_path):
  """OpenFlamingo's released layout on a tied MPT (its tokenizer had a pad token: 2 new rows):
  the resampler, gated layers and embedding table from the checkpoint, the LM's blocks from its
  directory, the tower from the CLIP checkpoint; logits within 1e-4 on all columns."""
  model, lm_path, clip = tiny_open_flamingo("mpt", tmp_path, pad=False)
  trained = {k: v for k, v in model.state_dict().items()
             if k.startswith("perceiver.") or "gated_cross_attn_layer." in k
             or k == "lang_encoder.transformer.wte.weight"}
  torch.save(trained, tmp_path / "of.pt")
  torch.save(clip.state_dict(), tmp_path / "clip.pt")
  config = importer.open_flamingo_config(tiny_config, tmp_path / "of.pt", lm_path,
                                         tmp_path / "clip.pt", vocab_size=VOCAB,
                                         open_clip_cfg=OPEN_CLIP_CFG)
  params, report = importer.import_open_flamingo(tmp_path / "of.pt", config, lm_path,
                                                 tmp_path / "clip.pt")
  assert config.model.lm.num_extra_tokens == 2 and config.model.lm.position == "alibi"
  assert not (report.missing or report.unexpected or report.initialised)
  assert set(report.ignored) == {"transformer.wte.weight", "visual.ln_post.bias",
                                 "visual.ln_post.weight", "visual.proj"}
  images = random_images(1)
  theirs = reference(model, images)
  assert np.abs(ours(config, params, images) - theirs).max() < 1e-4
  text = str(report)
  assert "lang_encoder.transformer.blocks.*.gated_cross_attn_layer.attn.to_kv.weight " \
         "(1024, 32) -> gated_xattn_*/attention/key/kernel (32, 8, 64)" in text


def test_tower_tokens_after_ln_post_for_a_newer_open_clip(tiny_config, tmp_path):
  """An OpenFlamingo trained with open_clip >= 2.23 read its tower's tokens after ln_post:
  `tower_ln_post` gives its logits; the released models' default would not."""
  model, lm_path, _ = tiny_open_flamingo("llama", tmp_path, pad=True, tower_ln_post=True)
  torch.save(model.state_dict(), tmp_path / "of.pt")
  images = random_images(3)
  theirs = reference(model, images)
  logits = {}
  for tower_ln_post in (False, True):
    config = importer.open_flamingo_config(tiny_config, tmp_path / "of.pt", lm_path,
                                           vocab_size=VOCAB, open_clip_cfg=OPEN_CLIP_CFG,
                                           tower_ln_post=tower_ln_post)
    assert config.model.vision.final_norm == tower_ln_post
    params, report = importer.import_open_flamingo(tmp_path / "of.pt", config, lm_path)
    assert not (report.missing or report.unexpected)
    logits[tower_ln_post] = ours(config, params, images)
  assert np.abs(logits[True] - theirs).max() < 1e-4
  assert np.abs(logits[False] - theirs).max() > 1e-2


def test_wrong_shape_names_key_and_both_shapes(tiny_config, tmp_path):
  model, lm_path, _ = tiny_open_flamingo("llama", tmp_path, pad=True)
  torch.save(model.state_dict(), tmp_path / "of.pt")
  config = importer.open_flamingo_config(tiny_config, tmp_path / "of.pt", lm_path,
                                         vocab_size=VOCAB, open_clip_cfg=OPEN_CLIP_CFG)
  config.model.resampler.mlp_ratio = 2
  with pytest.raises(ValueError) as error:
    importer.import_open_flamingo(tmp_path / "of.pt", config, lm_path)
  message = str(error.value)
  assert "'perceiver.layers.0.1.1.weight' has shape (128, 32), but the OpenFlamingo config " \
         "expects (64, 32)" in message
  with pytest.raises(ValueError, match=re.escape("102 tokens and <|endofchunk|>, <image>")):
    importer.open_flamingo_config(tiny_config, tmp_path / "of.pt", lm_path, vocab_size=102)


@pytest.mark.slow
def test_convert_cli_writes_what_flamingo_loads(tmp_path):
  """`convert --from open_flamingo` on a released-style checkpoint, the LM's directory (with
  its tokenizer) and the CLIP checkpoint: `flamingo_jax.load` gives OpenFlamingo's logits."""
  model, lm_path, clip = tiny_open_flamingo("mpt", tmp_path, pad=False)
  word_tokenizer(lm_path, VOCAB)
  trained = {k: v for k, v in model.state_dict().items()
             if k.startswith("perceiver.") or "gated_cross_attn_layer." in k
             or k == "lang_encoder.transformer.wte.weight"}
  torch.save(trained, tmp_path / "of.pt")
  torch.save(clip.state_dict(), tmp_path / "clip.pt")
  (tmp_path / "cfg.json").write_text(json.dumps(dict(model_cfg=OPEN_CLIP_CFG)))
  stdout = convert("--from=open_flamingo", f"--path={tmp_path / 'of.pt'}", f"--lm={lm_path}",
                   f"--vision={tmp_path / 'clip.pt'}",
                   f"--open_clip_config={tmp_path / 'cfg.json'}", f"--out={tmp_path / 'out'}")
  assert "missing: 0\n  unexpected: 0\n  initialised: 0" in stdout
  _, params, config = flamingo_jax.load(tmp_path / "out")
  assert (tmp_path / "out" / "tokenizer.json").exists() and config.model.lm.vocab_size == VOCAB
  images = random_images(2)
  assert np.abs(ours(config, params, images) - reference(model, images)).max() < 1e-4
