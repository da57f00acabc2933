"""Hugging Face LM import: each family's tiny random transformers model, saved in its native
format, imported and compared logit by logit; sharded placement on the 8-device CPU mesh;
errors and the report."""

import dataclasses
import json
import pathlib

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tokenizers

from flamingo_jax.configs import base
from flamingo_jax.checkpoints import engine, hf_lm
from flamingo_jax.checkpoints.tensors import CheckpointTensors
from flamingo_jax.layers import attention
from flamingo_jax.lm.model import DecodeState, DecoderLM, LMConfig
from flamingo_jax import sharding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 128
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4)

# model_type -> (transformers config class, causal LM class, tiny config).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM",
              dict(SMALL, num_key_value_heads=2, rope_theta=5e5, rms_norm_eps=1e-5)),
    "llama_tied_bias": ("LlamaConfig", "LlamaForCausalLM",  # Tied head; optional biases.
                        dict(SMALL, tie_word_embeddings=True, attention_bias=True,
                             mlp_bias=True)),
    "llama3_rope": ("LlamaConfig", "LlamaForCausalLM",  # LLaMA 3.1's RoPE scaling: with
                    dict(SMALL, rope_parameters=dict(   # head_dim 16, wavelengths in all 3 bands.
                        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                        high_freq_factor=4.0, original_max_position_embeddings=64))),
    "llama_linear_rope": ("LlamaConfig", "LlamaForCausalLM",
                          dict(SMALL, rope_parameters=dict(rope_type="linear",
                                                           rope_theta=10000.0, factor=4.0))),
    "mistral": ("MistralConfig", "MistralForCausalLM",
                dict(SMALL, num_key_value_heads=1, head_dim=24, sliding_window=None)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM",  # 4 of the 16 tokens tested.
                       dict(SMALL, num_key_value_heads=2, sliding_window=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32,
                  bos_token_id=0, eos_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(SMALL, rotary_pct=0.5)),
    "gpt_neox_serial": ("GPTNeoXConfig", "GPTNeoXForCausalLM",
                        dict(SMALL, use_parallel_residual=False, tie_word_embeddings=True)),
    "mpt": ("MptConfig", "MptForCausalLM",
            dict(vocab_size=VOCAB, d_model=64, n_heads=4, n_layers=2, max_seq_len=32)),
    "mpt_clip": ("MptConfig", "MptForCausalLM",  # 6 heads: ALiBi's non-power-of-two slopes.
                 dict(vocab_size=VOCAB, d_model=96, n_heads=6, n_layers=2, max_seq_len=32,
                      attn_config=dict(clip_qkv=0.05))),
}


def reference_model(family: str, seed: int = 0):
  """A float32 transformers model of `family` with every parameter drawn at random: biases and
  norm scales too, which transformers initialises to zeros and ones, so that a misplaced one
  changes the logits."""
  config_cls, model_cls, kwargs = FAMILIES[family]
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:  # Norm scales ("weight") around 1, biases around 0.
        p.copy_(float(name.endswith("weight")) + 0.1 * torch.randn_like(p))
  return model


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.numpy()


def random_tokens(batch=2, length=16, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, length), dtype=np.int32)


def save_state_dict(model, directory: pathlib.Path, shards: int = 1):
  """The PyTorch `.bin` format (transformers >= 5 writes only safetensors): one file, or
  `shards` files and a pytorch_model.bin.index.json."""
  directory.mkdir(parents=True, exist_ok=True)
  model.config.save_pretrained(directory)
  state = model.state_dict()
  if shards == 1:
    torch.save(state, directory / "pytorch_model.bin")
    return
  weight_map = {}
  keys = list(state)
  for s in range(shards):
    name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
    part = keys[s::shards]
    torch.save({k: state[k] for k in part}, directory / name)
    weight_map |= dict.fromkeys(part, name)
  (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def import_and_compare(model, directory):
  """Imports `directory` and checks its logits against `model`'s: (params, report)."""
  params, report = hf_lm.import_lm(directory)
  config = LMConfig.from_dict(hf_lm.lm_config_from_hf(model.config.to_dict()))
  tokens = random_tokens()
  ours = DecoderLM(config).apply({"params": params}, jnp.asarray(tokens))
  theirs = reference_logits(model, tokens)
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
  return params, report


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
  """save_pretrained's safetensors: float32 logits within 1e-4, every tensor used."""
  model = reference_model(family)
  model.save_pretrained(tmp_path)
  _, report = import_and_compare(model, tmp_path)
  assert not (report.missing or report.unexpected or report.initialised)
  assert set(report.loaded) == set(CheckpointTensors(tmp_path).keys()) - set(report.ignored)


def test_pytorch_bin_single_and_sharded(tmp_path):
  model = reference_model("gpt_neox")
  save_state_dict(model, tmp_path / "single")
  save_state_dict(model, tmp_path / "sharded", shards=3)
  for directory in ("single", "sharded"):
    import_and_compare(model, tmp_path / directory)


def test_bare_model_keys_and_buffers(tmp_path):
  """The original GPT-2 checkpoint's layout: keys without "transformer.", the causal-mask
  buffers each block carried, and no head (tied)."""
  model = reference_model("gpt2")
  state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()
           if k != "lm_head.weight"}
  for i in range(2):
    state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
  model.config.save_pretrained(tmp_path)
  torch.save(state, tmp_path / "pytorch_model.bin")
  _, report = import_and_compare(model, tmp_path)
  assert report.ignored == ("h.0.attn.bias", "h.1.attn.bias") and not report.unexpected


def test_sharded_safetensors(tmp_path):
  model = reference_model("gpt2")
  model.save_pretrained(tmp_path, max_shard_size="20KB")
  assert (tmp_path / "model.safetensors.index.json").exists()
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  import_and_compare(model, tmp_path)


def test_bfloat16_tensors(tmp_path):
  """numpy has no bfloat16: both formats read its bits, and the import upcasts them."""
  model = reference_model("llama").to(torch.bfloat16)
  model.save_pretrained(tmp_path / "safetensors")
  save_state_dict(model, tmp_path / "bin")
  expected = model.state_dict()["model.embed_tokens.weight"].float().numpy()
  for directory in ("safetensors", "bin"):
    x = CheckpointTensors(tmp_path / directory).get("model.embed_tokens.weight")
    assert x.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(x, np.float32), expected)
  params, _ = hf_lm.import_lm(tmp_path / "safetensors")
  assert params["embedder"]["embedding"].dtype == jnp.float32
  np.testing.assert_array_equal(params["embedder"]["embedding"], expected)


def test_sharded_placement_on_the_cpu_mesh(tmp_path):
  """fsdp x tensor = 2 x 4 devices: every parameter arrives with its sharding and its values,
  the new token rows too."""
  model = reference_model("llama")
  model.save_pretrained(tmp_path)
  fields = hf_lm.lm_config_from_hf(model.config.to_dict())
  config = LMConfig.from_dict(fields | dict(num_extra_tokens=2))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=2, tensor=4)))
  variables = jax.eval_shape(DecoderLM(config).init, jax.random.key(0),
                             jnp.zeros((1, 1), jnp.int32))
  shardings = sharding.shardings(nn.get_partition_spec(variables["params"]),
                                 nn.meta.unbox(variables["params"]), mesh,
                                 base.PARTITIONING_RULES)
  sharded, _ = hf_lm.import_lm(tmp_path, config, shardings)
  plain, _ = hf_lm.import_lm(tmp_path, config)
  flat = flax.traverse_util.flatten_dict(sharded, sep="/")
  for path, placement in flax.traverse_util.flatten_dict(shardings, sep="/").items():
    assert flat[path].sharding == placement, path
  jax.tree.map(np.testing.assert_array_equal, sharded, plain)
  # The embedding [128, 64]: vocab over 4 tensor devices, embed over 2 fsdp devices.
  embedding = flat["embedder/embedding"]
  assert {s.data.shape for s in embedding.addressable_shards} == {(32, 32)}
  query = flat["layers_0/attention/query/kernel"]  # [64, 4 heads, 16]
  assert {s.data.shape for s in query.addressable_shards} == {(32, 1, 16)}


def test_parameters_are_placed_as_they_are_read(tmp_path, monkeypatch):
  """Each parameter goes to its devices before the next one's tensors are read: the host holds
  one parameter at a time, never the whole tree."""
  model = reference_model("gpt2")
  model.save_pretrained(tmp_path)
  events = []
  read, place = CheckpointTensors.get, engine._place  # pylint: disable=protected-access

  def logged_read(self, key):
    events.append("read")
    return read(self, key)

  def logged_place(x, sharding):
    events.append("place")
    return place(x, sharding)

  monkeypatch.setattr(CheckpointTensors, "get", logged_read)
  monkeypatch.setattr(engine, "_place", logged_place)
  params, _ = hf_lm.import_lm(tmp_path)
  num_params = len(jax.tree.leaves(params))
  assert events == ["read", "place"] * num_params


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
  model = reference_model("llama")
  model.save_pretrained(tmp_path)
  fields = hf_lm.lm_config_from_hf(model.config.to_dict())
  with pytest.raises(ValueError) as error:
    hf_lm.import_lm(tmp_path, LMConfig.from_dict(fields | dict(mlp_dim=128)))
  message = str(error.value)
  assert "'model.layers.0.mlp.gate_proj.weight' has shape (96, 64)" in message
  assert "expects (128, 64)" in message
  assert "layers_0/mlp/gate/kernel of shape (64, 128)" in message


def test_fused_qkv_needs_as_many_kv_heads(tmp_path):
  model = reference_model("gpt2")
  model.save_pretrained(tmp_path)
  fields = hf_lm.lm_config_from_hf(model.config.to_dict())
  with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.c_attn.*num_kv_heads=2"):
    hf_lm.import_lm(tmp_path, LMConfig.from_dict(fields | dict(num_kv_heads=2)))


def test_report_names_missing_and_unexpected(tmp_path):
  model = reference_model("qwen2")
  state = model.state_dict()
  del state["model.layers.1.self_attn.k_proj.bias"]
  state["model.layers.1.self_attn.stray.weight"] = torch.zeros(3)
  state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(8)  # An old buffer.
  model.config.save_pretrained(tmp_path)
  torch.save(state, tmp_path / "pytorch_model.bin")

  with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.k_proj\.bias.*"
                                       r"model\.layers\.1\.self_attn\.stray\.weight"):
    hf_lm.import_lm(tmp_path)
  params, report = hf_lm.import_lm(tmp_path, strict=False)
  assert report.missing == ("model.layers.1.self_attn.k_proj.bias",)
  assert report.unexpected == ("model.layers.1.self_attn.stray.weight",)
  assert report.ignored == ("model.layers.0.self_attn.rotary_emb.inv_freq",)
  assert report.initialised == ("layers_1/attention/key/bias",)
  assert len(report.loaded) == len(state) - 2
  assert params["layers_1"]["attention"]["key"]["bias"].shape == (2, 16)
  text = str(report)
  for name in (*report.missing, *report.unexpected, *report.initialised):
    assert name in text
  assert "model.layers.*.self_attn.q_proj.weight (64, 64) -> layers_*/attention/query/kernel " \
         "(64, 4, 16)" in text


def test_extra_tokens_are_initialised(tmp_path):
  """Flamingo's <image> and <EOC> rows are new: fresh values, the vocabulary's logits intact."""
  model = reference_model("llama")
  model.save_pretrained(tmp_path)
  fields = hf_lm.lm_config_from_hf(model.config.to_dict())
  config = LMConfig.from_dict(fields | dict(num_extra_tokens=2))
  params, report = hf_lm.import_lm(tmp_path, config)
  assert report.initialised == ("extra_embedding", "extra_unembedding") and not report.missing
  assert float(jnp.std(params["extra_embedding"])) > 0
  tokens = random_tokens()
  logits = DecoderLM(config).apply({"params": params}, jnp.asarray(tokens))
  assert logits.shape == (2, 16, VOCAB + 2)
  np.testing.assert_allclose(logits[..., :VOCAB], reference_logits(model, tokens), atol=1e-4,
                             rtol=0)


def test_legacy_config_keys():
  """Configs written before transformers 5 keep RoPE settings at the top level."""
  neox = dict(model_type="gpt_neox", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=96, rotary_pct=0.25,
              rotary_emb_base=20000, hidden_act="gelu")
  fields = hf_lm.lm_config_from_hf(neox)
  assert (fields["rope_fraction"], fields["rope_theta"]) == (0.25, 20000.0)
  llama = dict(model_type="llama", **SMALL, rope_theta=5e5, rope_scaling=None,
               max_position_embeddings=131072)
  assert hf_lm.lm_config_from_hf(llama)["rope_theta"] == 5e5
  # Llama-3.1-8B's config.json as released (transformers 4.43).
  llama31 = llama | dict(rope_scaling=dict(factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=8192,
                                           rope_type="llama3"))
  fields = hf_lm.lm_config_from_hf(llama31)
  assert LMConfig.from_dict(fields).rope == attention.Rope(5e5, 1.0, "llama3", 8.0, 1.0, 4.0,
                                                           8192)
  with pytest.raises(ValueError, match="'yarn'"):
    hf_lm.lm_config_from_hf(llama | dict(rope_scaling=dict(rope_type="yarn", factor=4.0)))
  qwen2 = dict(model_type="qwen2", **SMALL, sliding_window=4096, use_sliding_window=False)
  assert hf_lm.lm_config_from_hf(qwen2)["sliding_window"] == 0
  with pytest.raises(ValueError, match="'bert'"):
    hf_lm.lm_config_from_hf(dict(model_type="bert"))


def test_llama3_frequencies_are_transformers():
  """Each band of LLaMA 3.1's rescaled frequencies, as transformers computes them."""
  model = reference_model("llama3_rope")
  theirs = model.model.rotary_emb.inv_freq.numpy()
  config = LMConfig.from_dict(hf_lm.lm_config_from_hf(model.config.to_dict()))
  ours = config.rope.inverse_frequencies(config.dh)
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  plain = dataclasses.replace(config.rope, scaling="none").inverse_frequencies(config.dh)
  assert ours[0] == plain[0] and ours[-1] == plain[-1] / 8  # Kept, divided,
  assert plain[2] / 8 < ours[2] < plain[2]                  # and blended between.


WINDOWED = dict(norm="rms", position="rope", num_kv_heads=2, sliding_window=3,
                rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_length=16)
ALIBI = dict(norm="layer", norm_bias=False, activation="gelu", gated_mlp=False,
             position="alibi", clip_qkv=0.5, tie_embeddings=True)


@pytest.mark.parametrize("fields", [ALIBI, WINDOWED], ids=["alibi", "sliding_window"])
def test_decoding_with_cache_matches_full_forward(fields):
  """ALiBi reads key positions from the cache, and a sliding window masks the slots it has
  passed: token-by-token logits equal one full pass."""
  config = LMConfig(vocab_size=VOCAB, embed_dim=32, num_layers=2, num_heads=6, head_dim=8,
                    mlp_dim=64, **fields)
  lm = DecoderLM(config)
  tokens = jnp.asarray(random_tokens(length=6))
  params = jax.jit(lm.init)(jax.random.key(1), tokens)["params"]
  full = jax.jit(lm.apply)({"params": params}, tokens)
  step = jax.jit(lambda token, position, state: lm.apply({"params": params}, token, position,
                                                         state, method=DecoderLM.extend))
  state = DecodeState.zeros(config, batch=2, length=6)
  steps = []
  for i in range(6):
    logits, state = step(tokens[:, i:i + 1], jnp.full((2, 1), i, jnp.int32), state)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_load_tokenizer(tmp_path):
  vocab = {"[UNK]": 0, "hello": 1, "world": 2}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(tmp_path)
  loaded = hf_lm.load_tokenizer(tmp_path)
  assert loaded.encode("hello there world").ids == [1, 0, 2]
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    hf_lm.load_tokenizer(tmp_path / "nowhere")
