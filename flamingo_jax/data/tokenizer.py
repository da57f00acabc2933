"""Training a SentencePiece vocabulary on a text corpus, for `mixtures.make_vocabulary`.

    path = tokenizer.train_sentencepiece(synthetic.corpus(seed=0, num_examples=2000), 512,
                                         "workdir/spm.model")
    config.data.vocabulary = path
"""

import pathlib
from typing import Iterable

import sentencepiece as spm


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
