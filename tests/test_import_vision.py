"""Vision tower import: tiny random transformers CLIP / SigLIP and open_clip ViTs, saved in their
native formats, imported and compared feature by feature; config derivation, sharded placement,
errors and the report."""

import json
import subprocess
import sys

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tokenizers

import flamingo_jax
from conftest import REPO, user_environment
from flamingo_jax.configs import base
from flamingo_jax.checkpoints import engine, vit as importer
from flamingo_jax.checkpoints.tensors import CheckpointTensors
from flamingo_jax import sharding
from flamingo_jax.vision import make_vision_encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             image_size=32, patch_size=8)
# A tiny open_clip model config (open_clip's JSON format): QuickGELU as OpenFlamingo's ViT-L/14.
OPEN_CLIP_CFG = dict(
    embed_dim=16, quick_gelu=True,
    vision_cfg=dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8,
                    mlp_ratio=2.0),
    text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1))


def randomize(model, seed=0):
  """Every parameter drawn at random, norm scales around 1 and biases around 0 too, so that a
  misplaced one changes the features."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(float(name.endswith("weight")) + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return model.eval()


def random_images(n=2, size=32, seed=0) -> np.ndarray:
  """[N, H, W, 3] float32, ours; torch takes them as [N, 3, H, W]."""
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def nchw(images: np.ndarray):
  return torch.from_numpy(images).permute(0, 3, 1, 2)


def features(vision, params, images) -> np.ndarray:
  model = make_vision_encoder(ml_collections.ConfigDict(vision))
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(images)))


def hf_model(kind: str):
  """A random transformers CLIPVisionModel, SiglipVisionModel or whole CLIPModel."""
  if kind == "clip_model":
    config = transformers.CLIPConfig(
        vision_config=SMALL, text_config=dict(SMALL, vocab_size=64, max_position_embeddings=8),
        projection_dim=16)
    return randomize(transformers.CLIPModel(config))
  name = {"clip": "CLIP", "siglip": "Siglip"}[kind]
  config = getattr(transformers, f"{name}VisionConfig")(**SMALL)
  return randomize(getattr(transformers, f"{name}VisionModel")(config))


def hf_reference(model, images) -> tuple[np.ndarray, np.ndarray]:
  """(patch tokens after the final LayerNorm, transformers' last_hidden_state patch tokens)."""
  tower = model.vision_model if isinstance(model, transformers.CLIPModel) else model
  with torch.no_grad():
    hidden = tower(pixel_values=nchw(images)).last_hidden_state
    if isinstance(tower, transformers.SiglipVisionModel):  # Normed already; no class token.
      return hidden.numpy(), hidden.numpy()
    return tower.post_layernorm(hidden)[:, 1:].numpy(), hidden[:, 1:].numpy()


def open_clip_model(cfg=OPEN_CLIP_CFG, tmp_path=None):
  """open_clip.create_model of a model config, from a local directory holding only it."""
  import open_clip  # pylint: disable=g-import-not-at-top  # With `make test`: fails if absent.
  directory = tmp_path / "open_clip_config"
  directory.mkdir()
  (directory / "open_clip_config.json").write_text(json.dumps(dict(model_cfg=cfg)))
  model = randomize(open_clip.create_model(f"local-dir:{directory}"))
  model.visual.output_tokens = True
  return model


def open_clip_reference(model, images) -> np.ndarray:
  with torch.no_grad():
    _, tokens = model.visual(nchw(images))
  return tokens.numpy()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_towers_match_transformers(kind, tmp_path):
  """save_pretrained's safetensors; the config from config.json; every tensor used but
  SigLIP's pooling head."""
  model = hf_model(kind)
  model.save_pretrained(tmp_path)
  vision = importer.vision_config_from_hf(json.loads((tmp_path / "config.json").read_text()))
  params, report = importer.import_hf_vision(tmp_path)
  images = random_images()
  normed, hidden = hf_reference(model, images)
  assert np.abs(features(vision, params, images) - normed).max() < 1e-4
  if kind == "clip":  # transformers' own last_hidden_state, without the final LayerNorm.
    plain = dict(vision, final_norm=False)
    params, _ = importer.import_hf_vision(tmp_path, plain)
    assert np.abs(features(plain, params, images) - hidden).max() < 1e-4
  assert not (report.missing or report.unexpected or report.initialised)
  assert all(k.startswith("head.") for k in report.ignored)
  assert bool(report.ignored) == (kind == "siglip")


def test_hf_clip_model_from_sharded_pytorch_bins(tmp_path):
  """A whole CLIPModel as sharded .bin files and an index: its vision_model, the text tower
  and projections ignored, by name."""
  model = hf_model("clip_model")
  model.config.save_pretrained(tmp_path)
  state = model.state_dict()
  keys, weight_map = list(state), {}
  for s in range(3):
    name = f"pytorch_model-{s + 1:05d}-of-00003.bin"
    torch.save({k: state[k] for k in keys[s::3]}, tmp_path / name)
    weight_map |= dict.fromkeys(keys[s::3], name)
  (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(dict(weight_map=weight_map)))

  params, report = importer.import_hf_vision(tmp_path)
  vision = importer.vision_config_from_hf(model.config.to_dict())
  assert vision["class_token"] and vision["activation"] == "quick_gelu"
  images = random_images()
  assert np.abs(features(vision, params, images) - hf_reference(model, images)[0]).max() < 1e-4
  assert all(k.startswith("vision_model.") for k in report.loaded)
  assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= set(
      report.ignored)
  text = str(report)
  assert "text_model.encoder.layers.*.mlp.fc1.weight" in text  # Folded by layer.
  assert "vision_model.encoder.layers.*.self_attn.q_proj.weight (32, 32) -> " \
         "blocks_*/attn/query/kernel (32, 4, 8)" in text


def test_vision_config_from_old_and_bare_configs():
  """Configs written before transformers 5 leave out default values."""
  old = dict(model_type="clip", vision_config=dict(hidden_size=1024, num_hidden_layers=24,
                                                   num_attention_heads=16, patch_size=14,
                                                   intermediate_size=4096))
  vision = importer.vision_config_from_hf(old)
  assert (vision["image_size"], vision["patch_size"], vision["width"]) == (224, 14, 1024)
  assert vision["activation"] == "quick_gelu" and vision["norm_eps"] == 1e-5
  siglip = importer.vision_config_from_hf(dict(model_type="siglip_vision_model",
                                               image_size=[384, 384]))
  assert siglip["image_size"] == 384 and siglip["activation"] == "gelu_tanh"
  assert not (siglip["class_token"] or siglip["pre_norm"]) and siglip["patch_bias"]
  with pytest.raises(ValueError, match="'vit'"):
    importer.vision_config_from_hf(dict(model_type="vit"))


@pytest.mark.parametrize("with_config", [True, False])
def test_open_clip_matches_open_clip(with_config, tmp_path):
  """torch.save of create_model's state dict: its `visual.*` tower, config from the open_clip
  model config or, without it, from the shapes with open_clip's defaults (head width 64, GELU);
  the text tower ignored."""
  cfg = OPEN_CLIP_CFG if with_config else dict(
      embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=128, patch_size=8),
      text_cfg=OPEN_CLIP_CFG["text_cfg"])
  model = open_clip_model(cfg, tmp_path)
  torch.save(model.state_dict(), tmp_path / "open_clip.pt")
  params, report = importer.import_open_clip(tmp_path / "open_clip.pt",
                                             model_cfg=cfg if with_config else None)
  vision = importer.vision_config_from_open_clip(
      importer.open_clip_files(tmp_path / "open_clip.pt")[0], cfg if with_config else None)
  assert vision["num_heads"] == (4 if with_config else 2)
  assert vision["activation"] == ("quick_gelu" if with_config else "gelu")
  images = random_images()
  assert np.abs(features(vision, params, images) - open_clip_reference(model, images)).max() < 1e-4
  assert not (report.missing or report.unexpected or report.initialised)
  assert "visual.proj" in report.ignored and "token_embedding.weight" in report.ignored
  assert all(k.startswith("visual.") for k in report.loaded)


def test_open_clip_directory_and_options(tmp_path):
  """An open_clip model directory (open_clip_config.json and its safetensors); no LayerNorm
  before the blocks and tokens before the final one (no_ln_pre, final_ln_after_pool)."""
  import safetensors.torch as safetensors_torch  # pylint: disable=g-import-not-at-top
  cfg = dict(OPEN_CLIP_CFG, quick_gelu=False, vision_cfg=dict(
      OPEN_CLIP_CFG["vision_cfg"], no_ln_pre=True, final_ln_after_pool=True, mlp_ratio=3.0,
      norm_kwargs=dict(eps=1e-6)))
  model = open_clip_model(cfg, tmp_path)
  directory = tmp_path / "model"
  directory.mkdir()
  (directory / "open_clip_config.json").write_text(json.dumps(dict(model_cfg=cfg)))
  safetensors_torch.save_file(model.state_dict(), directory / "open_clip_model.safetensors")
  params, report = importer.import_open_clip(directory)
  vision = importer.vision_config_from_open_clip(importer.open_clip_files(directory)[0], cfg)
  assert not (vision["pre_norm"] or vision["final_norm"]) and vision["norm_eps"] == 1e-6
  images = random_images()
  assert np.abs(features(vision, params, images) - open_clip_reference(model, images)).max() < 1e-4
  assert "visual.ln_post.weight" in report.ignored


def test_open_clip_unsupported_options_are_named():
  with pytest.raises(ValueError, match=r"\['ls_init_value'\]"):
    importer.vision_config_from_open_clip(None, dict(vision_cfg=dict(ls_init_value=0.1)))
  with pytest.raises(ValueError, match="ModifiedResNet"):
    importer.vision_config_from_open_clip(None, dict(vision_cfg=dict(layers=[3, 4, 6, 3])))


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
  model = hf_model("clip")
  model.save_pretrained(tmp_path)
  vision = importer.vision_config_from_hf(model.config.to_dict())
  with pytest.raises(ValueError) as error:
    importer.import_hf_vision(tmp_path, dict(vision, mlp_dim=64))
  message = str(error.value)
  assert "'encoder.layers.0.mlp.fc1.weight' has shape (48, 32)" in message
  assert "the vision config expects (64, 32)" in message
  assert "blocks_0/mlp/wi/kernel of shape (32, 64)" in message


def test_report_names_missing_and_unexpected(tmp_path):
  model = open_clip_model(OPEN_CLIP_CFG, tmp_path)
  state = model.visual.state_dict()  # A bare tower: no prefix.
  del state["transformer.resblocks.1.attn.in_proj_bias"]
  state["transformer.resblocks.1.stray"] = torch.zeros(3)
  torch.save(state, tmp_path / "visual.pt")
  with pytest.raises(ValueError, match=r"missing \['transformer\.resblocks\.1\.attn\.in_proj_bias'"
                                       r"\], unexpected \['transformer\.resblocks\.1\.stray'\]"):
    importer.import_open_clip(tmp_path / "visual.pt", model_cfg=OPEN_CLIP_CFG)
  params, report = importer.import_open_clip(tmp_path / "visual.pt", model_cfg=OPEN_CLIP_CFG,
                                             strict=False)
  assert report.missing == ("transformer.resblocks.1.attn.in_proj_bias",)
  assert report.unexpected == ("transformer.resblocks.1.stray",)
  assert report.ignored == ("proj",)
  assert set(report.initialised) == {f"blocks_1/attn/{n}/bias" for n in ("query", "key", "value")}
  assert params["blocks_1"]["attn"]["query"]["bias"].shape == (4, 8)
  text = str(report)
  for name in (*report.missing, *report.unexpected, *report.initialised):
    assert name in text


def test_sharded_placement_on_the_cpu_mesh(tmp_path):
  """fsdp x tensor = 2 x 4 devices: every parameter arrives with its sharding and its values."""
  model = hf_model("siglip")
  model.save_pretrained(tmp_path)
  vision = importer.vision_config_from_hf(model.config.to_dict())
  tower = make_vision_encoder(ml_collections.ConfigDict(vision))
  variables = jax.eval_shape(tower.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=4)))
  shardings = sharding.shardings(nn.get_partition_spec(variables["params"]),
                                 nn.meta.unbox(variables["params"]), mesh,
                                 base.PARTITIONING_RULES)
  sharded, _ = importer.import_hf_vision(tmp_path, shardings=shardings)
  plain, _ = importer.import_hf_vision(tmp_path)
  flat = flax.traverse_util.flatten_dict(sharded, sep="/")
  for path, placement in flax.traverse_util.flatten_dict(shardings, sep="/").items():
    assert flat[path].sharding == placement, path
  jax.tree.map(np.testing.assert_array_equal, sharded, plain)
  kernel = flat["blocks_0/mlp/wi/kernel"]  # [32 embed over 2 fsdp, 48 mlp over 4 tensor].
  assert {s.data.shape for s in kernel.addressable_shards} == {(16, 12)}


def test_parameters_are_placed_as_they_are_read(tmp_path, monkeypatch):
  """The engine's: each parameter goes to its devices before the next one's tensors are
  read, so the host holds one parameter at a time."""
  model = hf_model("clip")
  model.save_pretrained(tmp_path)
  events = []
  read, place = CheckpointTensors.get, engine._place  # pylint: disable=protected-access
  monkeypatch.setattr(CheckpointTensors, "get",
                      lambda self, key: events.append("read") or read(self, key))
  monkeypatch.setattr(engine, "_place", lambda x, sharding: events.append("place") or place(
      x, sharding))
  params, _ = importer.import_hf_vision(tmp_path)
  assert events == ["read", "place"] * len(jax.tree.leaves(params))


def word_tokenizer(path, size: int):
  """A word-level tokenizer of `size` tokens (the last one EOS), saved as transformers does."""
  vocab = {f"w{i}": i for i in range(size - 1)} | {"</s>": size - 1}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
  transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                       eos_token="</s>").save_pretrained(path)


def convert(*flags):
  """Runs `python -m flamingo_jax.checkpoints.convert` with `flags`; returns its stdout."""
  run = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.checkpoints.convert", *flags,
       "--config=configs/tiny.py"], cwd=REPO, env=user_environment(), capture_output=True,
      text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("source", ["open_clip", "hf"])
def test_convert_cli_puts_the_tower_where_flamingo_reads_it(source, tmp_path):
  """`convert --from open_clip` (with its open_clip config, and an LM from --lm) or `--from hf`
  with a SigLIP directory: the saved config's vision section is the tower's, and the Flamingo
  model's tower computes the reference's features."""
  if source == "open_clip":
    model = open_clip_model(OPEN_CLIP_CFG, tmp_path)
    torch.save(model.state_dict(), tmp_path / "clip.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(OPEN_CLIP_CFG))
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4))
    lm.save_pretrained(tmp_path / "lm")
    word_tokenizer(tmp_path / "lm", 64)
    flags = [f"--path={tmp_path / 'clip.pt'}", f"--open_clip_config={tmp_path / 'cfg.json'}",
             f"--lm={tmp_path / 'lm'}"]
  else:
    model = hf_model("siglip")
    model.save_pretrained(tmp_path / "siglip")
    flags = [f"--path={tmp_path / 'siglip'}"]
  stdout = convert(f"--from={source}", *flags, f"--out={tmp_path / 'flamingo'}")
  assert "missing: 0\n  unexpected: 0" in stdout
  flamingo, params, config = flamingo_jax.load(tmp_path / "flamingo")
  vision = config.model.vision.to_dict()
  images = random_images()
  tokens = features(vision, params["vision_encoder"], images)
  if source == "open_clip":
    assert config.model.lm.vocab_size == 64 and (tmp_path / "flamingo" / "tokenizer.json").exists()
    assert np.abs(tokens - open_clip_reference(model, images)).max() < 1e-4
  else:
    assert config.model.image_preprocessing.mean == [0.5, 0.5, 0.5]  # SigLIP's.
    assert np.abs(tokens - hf_reference(model, images)[0]).max() < 1e-4
  assert config.model.resampler.dim == 48  # tiny.py's bridge, projecting the tower's 32.
  logits = flamingo.apply({"params": params}, jnp.asarray(images[:, None, None]),
                          jnp.array([[config.model.media_token_id, 5, 6]] * 2, jnp.int32))
  assert np.isfinite(np.asarray(logits)).all()
