"""The demo's stage-0 vocabulary: a SentencePiece model trained on the synthetic text, in which
every word is one token, with the ids seqio and the model expect."""

import seqio

from flamingo_jax.data import preprocess
from flamingo_jax.data import synthetic


def test_corpus_is_the_text_of_every_kind_and_deterministic():
  texts = list(synthetic.corpus(seed=0, num_examples=3))
  assert texts == list(synthetic.corpus(seed=0, num_examples=3))
  pair = synthetic.pair_example(0, "train", 2, image_size=12)["text"]
  binding = synthetic.training_text(
      "binding", synthetic.binding_example(0, "train", 2, image_size=12))["texts"]
  assert pair in texts and binding[-1] in texts and binding[-1].startswith("This is a ")
  assert any(text.startswith("Question: ") for text in texts)
  assert "" not in texts


def test_every_word_is_one_token_and_ids_are_seqio_s(demo_vocabulary):
  vocabulary = seqio.SentencePieceVocabulary(demo_vocabulary)
  assert vocabulary.vocab_size == 512
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
  assert preprocess.special_ids(vocabulary).bos is None
  frame = vocabulary.encode("This is a")
  assert len(frame) == 3
  # Made-up words of held-out episodes, with more ways than training draws.
  for index in range(200):
    for word in synthetic.binding_example(0, "test", index, 12, ways=3)["candidates"]:
      tokens = vocabulary.encode(f"This is a {word}.")
      assert tokens[:3] == frame and len(tokens) == 5, word
      assert vocabulary.decode(tokens) == f"This is a {word}."
  for text in synthetic.corpus(seed=0, num_examples=50, split="test"):
    assert vocabulary.decode(vocabulary.encode(text)) == text
