"""Vocabularies: the demo's stage-1 SentencePiece model trained on the synthetic text, in which
every word is one token, with the ids seqio and the model expect; a pretrained LM's Hugging Face
tokenizer as a seqio vocabulary."""

import gguf
import pytest
import seqio
import tensorflow as tf
import tokenizers

from flamingo_jax.checkpoints import gguf_lm
from flamingo_jax.configs.base import smollm2_path
from flamingo_jax.data import preprocess
from flamingo_jax.data import synthetic
from flamingo_jax.data import tokenizer as tokenizer_lib


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


@pytest.fixture(scope="module")
def smollm2_vocabulary():
  return gguf_lm.load_vocabulary(gguf.GGUFReader(smollm2_path()))


def test_a_pretrained_lm_s_tokenizer_is_a_seqio_vocabulary(smollm2_vocabulary, tmp_path):
  """SmolLM2's tokenizer, saved as convert writes it and read back as `data.vocabulary`."""
  smollm2_vocabulary.save(tmp_path / "tokenizer.json")
  vocabulary = tokenizer_lib.make_vocabulary(str(tmp_path / "tokenizer.json"))
  assert vocabulary == smollm2_vocabulary
  assert vocabulary.vocab_size == 49152  # The LM's embedding rows: <image> is id 49152.
  assert (vocabulary.eos_id, vocabulary.bos_id) == (2, None)  # <|im_end|>; no BOS.
  text = "This is a red blek. Question: what is it? Answer: a dax"
  ids = vocabulary.encode(text)
  assert vocabulary.decode(ids) == text
  assert vocabulary.decode(ids + [vocabulary.eos_id] + ids) == text  # seqio: up to EOS.
  assert vocabulary.encode_tf(tf.constant(text)).numpy().tolist() == ids
  batch = tf.constant([ids, ids[::-1]], tf.int32)
  assert vocabulary.decode_tf(batch).numpy().tolist() == [
      text.encode(), vocabulary.decode(ids[::-1]).encode()]


def test_bos_is_what_the_tokenizer_opens_a_sequence_with(tmp_path):
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"<unk>": 0, "<s>": 1, "</s>": 2, "cat": 3}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", 1)])
  vocabulary = tokenizer_lib.TokenizersVocabulary(tokenizer, eos_id=2)
  assert (vocabulary.bos_id, vocabulary.encode("cat cat")) == (1, [3, 3])
  assert preprocess.special_ids(vocabulary).bos == 1  # Documents open with it.
  with pytest.raises(ValueError, match="EOS id 7"):
    tokenizer_lib.TokenizersVocabulary(tokenizer, eos_id=7)
  (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "</t>"}')
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match="'</t>' is not in"):
    tokenizer_lib.TokenizersVocabulary.from_file(tmp_path / "tokenizer.json")


def test_generated_ids_decode_up_to_the_stop_token():
  vocabulary = seqio.ByteVocabulary()  # Bytes at their value + 3; 259 ids.
  ids = [ord("h") + 3, 259, ord("i") + 3, 260, ord("x") + 3]  # 259: <image>, 260: <EOC>.
  assert tokenizer_lib.decode_text(ids, vocabulary, stop=260) == "hi"
  assert tokenizer_lib.decode_text(ids[:3], vocabulary, stop=260) == "hi"


def test_a_checkpoint_s_tokenizer_comes_before_its_config_s(smollm2_vocabulary, tmp_path):
  assert isinstance(tokenizer_lib.checkpoint_vocabulary(tmp_path, "byte"), seqio.ByteVocabulary)
  smollm2_vocabulary.save(tmp_path / tokenizer_lib.TOKENIZER_FILE)
  assert tokenizer_lib.checkpoint_vocabulary(tmp_path, "byte") == smollm2_vocabulary
