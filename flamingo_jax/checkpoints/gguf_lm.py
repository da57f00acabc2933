"""GGUF (llama.cpp) LLaMA-family checkpoints: the config, the tensors and the tokenizer one
file holds, and the names its tensors have in the LM's table.

    params, config, report = lm_sources.import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer = load_tokenizer(gguf.GGUFReader("SmolLM2-135M-Instruct.Q4_1.gguf"))

A file holds the config (`{arch}.*` keys), the tokenizer (`tokenizer.ggml.*`) and the tensors,
quantised or not, memory-mapped. llama.cpp's converter writes a Hugging Face checkpoint's
tensors under gguf's own name map, so the GGUF table is the Hugging Face one (hf_lm.layout)
renamed (`layout`; lm_sources.import_gguf composes the two). Conventions of the converter
undone here:
- GGUF lists dims fastest first: a tensor of GGUF shape [in, out] is numpy's [out, in], the
  torch Linear weight.
- For LLaMA it permutes the rows of q and k per head from the rotate-half RoPE layout (Hugging
  Face's and this library's) to interleaved pairs; `unpermute` puts them back.
A quantised tensor (Q4_1, Q8_0, ...) is dequantised to float32 when its parameter is built, one
at a time.
"""

import dataclasses
import functools
import re

import gguf
import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from flamingo_jax.checkpoints.engine import Source
from flamingo_jax.data import tokenizer as tokenizer_lib
from flamingo_jax.lm.model import LMConfig

# general.architecture -> (Hugging Face model_type, whether q and k rows are permuted).
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False)}

# tokenizer.ggml.pre -> the split before byte-level BPE (llama.cpp's pre-tokenizer regexes).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                 r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2 = lambda: pre_tokenizers.ByteLevel(add_prefix_space=False)
_DIGITS = lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _GPT2()])
_SPLIT = lambda regex: lambda: pre_tokenizers.Sequence([
    pre_tokenizers.Split(tokenizers.Regex(regex), "isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
PRE_TOKENIZERS = {
    "gpt-2": _GPT2,
    "smollm": _DIGITS, "starcoder": _DIGITS, "refact": _DIGITS,
    "llama-bpe": _SPLIT(_LLAMA3_SPLIT),
    "qwen2": _SPLIT(_LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")),
}

_REQUIRED = object()


def value(reader: gguf.GGUFReader, key: str, default=_REQUIRED):
  """The metadata value `key` (str, number, bool or list), or `default` when absent."""
  if key in reader.fields:
    return reader.fields[key].contents()
  if default is _REQUIRED:
    raise KeyError(f"The GGUF file has no metadata key {key!r}.")
  return default


def architecture(reader: gguf.GGUFReader) -> str:
  arch = value(reader, gguf.Keys.General.ARCHITECTURE)
  if arch not in ARCHITECTURES:
    raise ValueError(f"Unsupported GGUF architecture {arch!r}; supported: {sorted(ARCHITECTURES)}.")
  return arch


def _float32(x: float) -> float:
  """A float32 metadata value as the decimal it was written from (1e-05, not 9.9999997e-06)."""
  return float(str(np.float32(x)))


def lm_config_from_gguf(reader: gguf.GGUFReader) -> dict:
  """LMConfig fields of the model a GGUF file's metadata describes (as hf_lm's `_llama_config`
  reads a config.json)."""
  arch = architecture(reader)
  get = lambda key, default=_REQUIRED: value(reader, key.format(arch=arch), default)
  scaling = get(gguf.Keys.Rope.SCALING_TYPE, "none")
  if scaling != "none":
    raise ValueError(f"RoPE scaling {scaling!r} is not supported; only plain rotary embeddings "
                     "are.")
  d, heads = get(gguf.Keys.LLM.EMBEDDING_LENGTH), get(gguf.Keys.Attention.HEAD_COUNT)
  head_dim = get(gguf.Keys.Attention.KEY_LENGTH, d // heads)
  return dict(
      vocab_size=len(reader.fields[gguf.Keys.Tokenizer.LIST].data), embed_dim=d,
      num_layers=get(gguf.Keys.LLM.BLOCK_COUNT), num_heads=heads,
      num_kv_heads=get(gguf.Keys.Attention.HEAD_COUNT_KV, heads), head_dim=head_dim,
      mlp_dim=get(gguf.Keys.LLM.FEED_FORWARD_LENGTH), norm="rms",
      norm_eps=_float32(get(gguf.Keys.Attention.LAYERNORM_RMS_EPS)), activation="silu",
      gated_mlp=True, qkv_bias=arch == "qwen2", position="rope",
      rope_theta=_float32(get(gguf.Keys.Rope.FREQ_BASE, 10000.0)),
      rope_fraction=get(gguf.Keys.Rope.DIMENSION_COUNT, head_dim) / head_dim,
      max_length=get(gguf.Keys.LLM.CONTEXT_LENGTH),
      # llama.cpp writes no output.weight when the head is the embedding.
      tie_embeddings=all(t.name != "output.weight" for t in reader.tensors))


class GGUFTensors:
  """name -> float32 tensor of a GGUF file, in numpy's dim order (the reverse of GGUF's);
  keys() and shape() read the header only, get() dequantises one tensor."""

  def __init__(self, reader: gguf.GGUFReader):
    self.tensors = {t.name: t for t in reader.tensors}

  def keys(self) -> list[str]:
    return list(self.tensors)

  def __contains__(self, key: str) -> bool:
    return key in self.tensors

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(self.tensors[key].shape))

  def get(self, key: str) -> np.ndarray:
    t = self.tensors[key]
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(self.shape(key))


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's `permute(w, heads)` of q or k ([heads * Dh, ...] weight or bias): each
  head's rows go from interleaved pairs (x0, y0, x1, y1, ...) back to halves (x..., y...)."""
  return w.reshape(heads, -1, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unpermuted(w, fn, heads):
  return fn(unpermute(w, heads))


def layout(arch: str, config: LMConfig, hf_layout: dict[str, Source]) -> dict[str, Source]:
  """{parameter path: Source} over a GGUF file's tensor names, from `hf_layout`, the Hugging
  Face table of the architecture's model_type (`ARCHITECTURES`)."""
  _, permuted = ARCHITECTURES[arch]
  names = gguf.get_tensor_name_map(
      {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], config.num_layers)
  sources = {}
  for path, source in hf_layout.items():
    (key,) = [names.get_name(k, try_suffixes=(".weight", ".bias")) for k in source.keys]
    fn = source.fn
    if permuted and (qk := re.search(r"\.attn_([qk])\.", key)):
      heads = config.num_heads if qk.group(1) == "q" else config.kv_heads
      fn = functools.partial(_unpermuted, fn=fn, heads=heads)
    sources[path] = dataclasses.replace(source, keys=(key,), fn=fn)
  return sources


def ignored(config: LMConfig):
  """key -> whether the LM has no use for the tensor: a head (output.weight) where the config
  ties it to the embedding."""
  return lambda key: config.tie_embeddings and key == "output.weight"


def _byte_level_bpe(reader, vocab: dict[str, int]) -> tokenizers.Tokenizer:
  """GPT-2-style BPE on bytes mapped to printable characters (tokenizer.ggml.model "gpt2")."""
  pre = value(reader, gguf.Keys.Tokenizer.PRE, "gpt-2")
  if pre not in PRE_TOKENIZERS:
    raise ValueError(f"Unsupported tokenizer.ggml.pre {pre!r}; supported: "
                     f"{sorted(PRE_TOKENIZERS)}.")
  merges = [tuple(m.split(" ", 1)) for m in value(reader, gguf.Keys.Tokenizer.MERGES)]
  # LLaMA 3 takes a word that is one token whole before merging (llama.cpp does too).
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, ignore_merges=pre == "llama-bpe"))
  tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
  tokenizer.decoder = decoders.ByteLevel()
  return tokenizer


def _sentencepiece_bpe(reader, vocab: dict[str, int], tokens, types) -> tokenizers.Tokenizer:
  """LLaMA 1/2's SentencePiece BPE (tokenizer.ggml.model "llama") as transformers' LlamaConverter
  writes it: merges are the splits of each piece into two pieces, the higher the merged piece's
  score the earlier; unknown characters fall back to byte tokens `<0x..>`."""
  scores = value(reader, gguf.Keys.Tokenizer.SCORES)
  merges = []
  for piece in sorted(vocab, key=lambda p: -scores[vocab[p]]):  # Stable: ties keep id order.
    merges += sorted(((piece[:i], piece[i:]) for i in range(1, len(piece))
                      if piece[:i] in vocab and piece[i:] in vocab),
                     key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
  unk = next((t for t, kind in zip(tokens, types) if kind == gguf.TokenType.UNKNOWN), None)
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                                              byte_fallback=True))
  prefix = value(reader, gguf.Keys.Tokenizer.ADD_PREFIX, True)
  tokenizer.normalizer = normalizers.Sequence(
      [normalizers.Prepend("▁")] * prefix + [normalizers.Replace(" ", "▁")])
  tokenizer.decoder = decoders.Sequence(
      [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
      + [decoders.Strip(" ", 1, 0)] * prefix)
  return tokenizer


def load_tokenizer(reader: gguf.GGUFReader) -> tokenizers.Tokenizer:
  """The model's tokenizer, rebuilt from the file's tokenizer.ggml.* metadata: byte-level BPE
  ("gpt2": GPT-2, SmolLM, LLaMA 3, Qwen2) or SentencePiece BPE ("llama": LLaMA 1/2).

  Control tokens (`<|im_start|>`, `<s>`) are matched whole and skipped by
  `decode(..., skip_special_tokens=True)`; `<bos>` is prepended when the file says so.
  """
  kind = value(reader, gguf.Keys.Tokenizer.MODEL)
  tokens = value(reader, gguf.Keys.Tokenizer.LIST)
  types = value(reader, gguf.Keys.Tokenizer.TOKEN_TYPE, [gguf.TokenType.NORMAL] * len(tokens))
  vocab = {t: i for i, t in enumerate(tokens)}
  if kind == "gpt2":
    tokenizer = _byte_level_bpe(reader, vocab)
  elif kind == "llama":
    tokenizer = _sentencepiece_bpe(reader, vocab, tokens, types)
  else:
    raise ValueError(f"Unsupported tokenizer.ggml.model {kind!r}; supported: gpt2, llama.")
  added = lambda kind: [tokenizers.AddedToken(t, normalized=False)
                        for t, k in zip(tokens, types) if k == kind]
  tokenizer.add_special_tokens(added(gguf.TokenType.CONTROL))
  tokenizer.add_tokens(added(gguf.TokenType.USER_DEFINED))
  # llama.cpp's defaults: SentencePiece models start with <bos>, BPE ones do not.
  if value(reader, gguf.Keys.Tokenizer.ADD_BOS, kind == "llama"):
    bos = tokens[value(reader, gguf.Keys.Tokenizer.BOS_ID)]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
  return tokenizer


def load_vocabulary(reader: gguf.GGUFReader) -> tokenizer_lib.TokenizersVocabulary:
  """The model's tokenizer (`load_tokenizer`) as a seqio vocabulary, with the file's EOS."""
  return tokenizer_lib.TokenizersVocabulary(load_tokenizer(reader),
                                            value(reader, gguf.Keys.Tokenizer.EOS_ID))

