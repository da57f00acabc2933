"""Vocabularies by spec (`make_vocabulary`), and generated ids back to text (`decode_text`).

A spec is "byte" (seqio.ByteVocabulary), the path of a SentencePiece model, or that of a
`tokenizer.json`. Beyond seqio's own vocabularies:

- a SentencePiece model trained here on a text corpus (the demo's word-level vocabulary):

    path = tokenizer.train_sentencepiece(synthetic.corpus(seed=0, num_examples=2000), 512,
                                         "workdir/spm.model")
    config.data.vocabulary = path

- a pretrained LM's Hugging Face tokenizer (a `tokenizer.json`, as checkpoints/convert.py
  writes beside an imported LM), so the data pipeline and the harness tokenise as that LM does:

    config.data.vocabulary = "checkpoint/tokenizer.json"
"""

import json
import pathlib
from typing import Iterable

import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf
import tokenizers

# Hugging Face's tokenizer file, and beside it its settings: what its EOS token is.
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def make_vocabulary(spec: str) -> seqio.Vocabulary:
  """The vocabulary a spec names: "byte", a `tokenizer.json` path or a SentencePiece model's."""
  if spec == "byte":
    return seqio.ByteVocabulary()
  if spec.endswith(".json"):
    return TokenizersVocabulary.from_file(spec)
  return seqio.SentencePieceVocabulary(spec)


def checkpoint_vocabulary(directory, spec: str) -> seqio.Vocabulary:
  """A checkpoint's vocabulary: the `tokenizer.json` in its directory (checkpoints.convert writes
  an imported LM's there), else the one `spec` names (its config's `data.vocabulary`)."""
  saved = pathlib.Path(directory) / TOKENIZER_FILE
  return make_vocabulary(str(saved) if saved.exists() else spec)


def decode_text(tokens: np.ndarray, vocabulary: seqio.Vocabulary, stop: int) -> str:
  """Generated ids [n] -> text, up to the stop token; ids past the vocabulary (`<image>`,
  `<EOC>`) are dropped."""
  ids = [int(t) for t in tokens]
  ids = ids[:ids.index(stop)] if stop in ids else ids
  return vocabulary.decode([t for t in ids if t < vocabulary.vocab_size])


def train_sentencepiece(sentences: Iterable[str], vocab_size: int, path) -> str:
  """Trains a BPE SentencePiece model of exactly `vocab_size` pieces and writes it to `path`;
  returns the path as a string.

  BPE merges the most frequent pairs until the vocabulary is full, so on a small, closed language
  every word that recurs becomes one piece (a unigram model stops at the corpus's few hundred
  seed pieces). Ids follow seqio's SentencePieceVocabulary: pad 0, EOS 1, UNK 2 and no BOS;
  `<image>` and `<EOC>` come after the vocabulary (`preprocess.special_ids`).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "wb") as model_writer:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model_writer, vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        minloglevel=2)
  return str(path)


class TokenizersVocabulary(seqio.Vocabulary):
  """A Hugging Face `tokenizers` tokenizer as a seqio Vocabulary.

  Its ids are the tokenizer's own, so `<image>` and `<EOC>` (`preprocess.special_ids`) take the
  first ids after them, as the imported LM's extra embedding rows. encode adds no special
  tokens; a document opens with what the tokenizer's post-processor opens a sequence with (BOS
  for LLaMA 1/2, nothing for byte-level BPE LMs such as SmolLM2); decode skips special tokens.
  pad_id is seqio's 0 (only ever under a zero loss weight); no unk_id (byte-level BPE needs none).
  """

  def __init__(self, tokenizer: tokenizers.Tokenizer, eos_id: int):
    if tokenizer.id_to_token(eos_id) is None:
      raise ValueError(f"The EOS id {eos_id} is not in the tokenizer's vocabulary.")
    super().__init__(extra_ids=0)
    self.tokenizer = tokenizer
    self._eos_id = eos_id
    opening = tokenizer.encode("").ids
    self._bos_id = opening[0] if opening else None

  @classmethod
  def from_file(cls, path) -> "TokenizersVocabulary":
    """A tokenizer.json, with the EOS token that its directory's tokenizer_config.json names."""
    path = pathlib.Path(path)
    settings = path.parent / TOKENIZER_CONFIG_FILE
    if not settings.exists():
      raise FileNotFoundError(f"{settings} (which names the EOS token) is missing beside {path}.")
    eos = json.loads(settings.read_text())["eos_token"]
    eos = eos["content"] if isinstance(eos, dict) else eos  # An AddedToken, in some files.
    tokenizer = tokenizers.Tokenizer.from_file(str(path))
    if tokenizer.token_to_id(eos) is None:
      raise ValueError(f"{settings}: the EOS token {eos!r} is not in {path}.")
    return cls(tokenizer, tokenizer.token_to_id(eos))

  def save(self, path) -> None:
    """Writes the tokenizer.json `path`, and the tokenizer_config.json beside it that
    `from_file` reads its EOS from (Hugging Face's layout)."""
    path = pathlib.Path(path)
    eos = self.tokenizer.id_to_token(self.eos_id)
    (path.parent / TOKENIZER_CONFIG_FILE).write_text(json.dumps({"eos_token": eos}))
    self.tokenizer.save(str(path))

  @property
  def bos_id(self) -> int | None:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> None:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=True)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A string scalar -> int32 [n]."""
    encode = lambda s: np.asarray(self._encode(s.item().decode()), np.int32)
    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int32 [..., n] -> strings [...]."""
    def decode(ids: np.ndarray) -> np.ndarray:
      rows = ids.reshape(-1, ids.shape[-1])
      return np.asarray([self._decode(row) for row in rows], object).reshape(ids.shape[:-1])
    text = tf.numpy_function(decode, [ids], tf.string, stateful=False)
    return tf.ensure_shape(text, ids.shape[:-1])

  def __eq__(self, other) -> bool:
    return (isinstance(other, TokenizersVocabulary) and self.eos_id == other.eos_id
            and self.tokenizer.to_str() == other.tokenizer.to_str())
