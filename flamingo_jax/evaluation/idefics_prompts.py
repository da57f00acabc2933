"""IDEFICS's few-shot prompts, and where its answers end (the harness's `style="idefics"`).

Following Hugging Face M4's evaluation code (the `m4` repository's IDEFICS task classes, read
in its public copy rahim-xelpmoc/m4 at 0c3dd2e: `m4/models/vgpt2/evaluation_*_in_context_vgpt2.py`
and `m4/models/idefics/evaluation_*_in_context_idefics.py`, with the prompt template each
IDEFICS task selects: COCO and Flickr30k 7, VQAv2, OK-VQA and TextVQA 9), and transformers'
`IdeficsProcessor` for how an image is written in the text:

  captioning:  <s>Image:{image}Caption: c1\\nImage:{image}Caption: c2\\nImage:{image}Caption:
  VQA:         <s>Instruction: provide an answer to the question. Use the image to answer.\\n
               Image:{image}Question: q1 Answer: a1\\nImage:{image}Question: q Answer:

{image} being `<fake_token_around_image><image><fake_token_around_image>`. A support example
shows its most common answer (a caption's first reference); zero shots is the query alone
(m4 samples no support example), not the paper's two text-only examples. The whole text is
tokenised at once, as the processor and m4 do, so that the LLaMA tokenizer sees each piece of
text between two added tokens as IDEFICS saw it in training.

Decoding, as m4 generates: beam search (3 beams, 15 new tokens, Hugging Face's length penalty
1.0) that never writes a newline, `<image>` or `<fake_token_around_image>` (its
`bad_words_ids`), ending at the EOS; the text, special tokens skipped, is cut at the first of
the task's stop words (its `format_tokens_to_texts`; the m4 copy read is from after IDEFICS,
and its lists' Idefics2/3 tokens, `<row_` or `<|im_end|>`, are left out). m4's classification
prompts (per-dataset templates and class-name mappings) are not reproduced.
"""

import dataclasses
import re

import numpy as np
import seqio

from flamingo_jax.data import preprocess

IMAGE = "<fake_token_around_image><image><fake_token_around_image>"
MEDIA_TOKEN = "<image>"
# Never generated (m4's `bad_words`): a newline would start the next example.
BANNED_WORDS = ("\n", "\n\n", MEDIA_TOKEN, "<fake_token_around_image>")
# m4's TextGenerationParams.
BEAM_SIZE, MAX_NEW_TOKENS, LENGTH_PENALTY = 3, 15, 1.0


@dataclasses.dataclass(frozen=True)
class Template:
  """instruction: the text after the BOS, before the first example; example: one support
  example, with `{image}`, `{question}` and `{answer}`; stop_words: where a generated answer
  ends (the first of them, as a regular-expression alternative)."""
  instruction: str
  example: str
  stop_words: tuple[str, ...]

  def text(self, support: list[tuple[str | None, str]], query: str | None) -> str:
    """The prompt's text after the BOS: the support examples [(question, answer)], then the
    query's example up to its answer."""
    shots = "".join(self.example.format(image=IMAGE, question=q or "", answer=a)
                    for q, a in support)
    tested = self.example.format(image=IMAGE, question=query or "", answer="").strip()
    return (self.instruction + shots + tested).strip()

  def answer(self, generated: str) -> str:
    return re.split("|".join(self.stop_words), generated)[0].strip()


TEMPLATES = {
    "caption": Template(
        "", "Image:{image}Caption: {answer}\n",
        ("Caption", "Description", "User", "Image", "task", "<end_of_utterance>")),
    "vqa": Template(
        "Instruction: provide an answer to the question. Use the image to answer.\n",
        "Image:{image}Question: {question} Answer: {answer}\n",
        ("Question", "User", "Image", "task", "What", "Who", "When", "Where", "Why", "How",
         "<end_of_utterance>")),
}


def check_vocabulary(vocabulary: seqio.Vocabulary, media_token_id: int) -> None:
  """Raises unless the vocabulary writes `<image>` as one token, the model's media token (as
  the tokenizer.json that `convert --from idefics` keeps beside the checkpoint does)."""
  ids = vocabulary.encode(MEDIA_TOKEN)
  if ids != [media_token_id]:
    raise ValueError(f"The IDEFICS prompts need a vocabulary that writes {MEDIA_TOKEN} as the "
                     f"model's media token {media_token_id}; this one gives {ids}. Evaluate an "
                     "IDEFICS checkpoint (`convert --from idefics`) with its tokenizer.json.")


def prompt_tokens(template: Template, support: list[tuple[str | None, str]],
                  query: str | None, vocabulary: seqio.Vocabulary) -> np.ndarray:
  """int32 [n]: the BOS, then `Template.text` tokenised whole."""
  bos = preprocess.special_ids(vocabulary).bos
  text = vocabulary.encode(template.text(support, query))
  return np.asarray(([] if bos is None else [bos]) + text, np.int32)


def banned_sequences(vocabulary: seqio.Vocabulary) -> tuple[tuple[int, ...], ...]:
  """BANNED_WORDS as the token sequences decoding never completes."""
  return tuple(tuple(vocabulary.encode(word)) for word in BANNED_WORDS)
