"""Few-shot prompts: N support examples, each an image and its text, then the query's image and
its text up to where the model continues.

  shots:  <BOS> <image> Question: q1 Short answer: a1 <EOC> <image> Question: q2 ... <EOC>
  query:  <image> Question: q Short answer:

The layout is the training one (flamingo_jax.data.sequences: `<EOC>` after each text chunk
that precedes an image). The paper's zero-shot mode (section 3, appendix B.1.5) prompts with
two text-only support examples: their text and `<EOC>`, with no `<image>`.

Formats are those of the paper (appendix B.1.5) and of OpenFlamingo's evaluation suite, per
task kind: captions `Output: {answer}`, VQA `Question: {question} Answer: {answer}` (paper) or
`Question:{question} Short answer:{answer}` (OpenFlamingo), HatefulMemes `is an image with:
'{question}' written on it. Is it hateful? Answer: {answer}` with the meme's text as the
question.
"""

import dataclasses

import numpy as np
import seqio

from flamingo_jax.data import preprocess


@dataclasses.dataclass(frozen=True)
class Format:
  """query: the text after `<image>` up to the answer, with `{question}` where the question
  goes; separator: what comes between the query and an answer (the paper writes a space,
  OpenFlamingo nothing), so generation starts where an answer would; end: what follows an
  answer (the synthetic tasks end sentences with a full stop)."""
  query: str
  separator: str = ""
  end: str = ""

  def text(self, question: str | None, answer: str | None = None) -> str:
    query = self.query.format(question=question or "")
    return query if answer is None else query + self.answer(answer)

  def answer(self, answer: str) -> str:
    return self.separator + answer + self.end


FORMATS = {
    "paper": {
        "caption": Format("Output:", " "),
        "vqa": Format("Question: {question} Answer:", " "),
        "classification": Format("Output:", " "),
        "hateful_memes": Format("is an image with: '{question}' written on it. Is it hateful? "
                                "Answer:", " "),
    },
    "open_flamingo": {
        "caption": Format("Output:"),
        "vqa": Format("Question:{question} Short answer:"),
        "classification": Format("Output:"),
        "hateful_memes": Format("is an image with: '{question}' written on it. Is it hateful? "
                                "Answer:"),
    },
}
# Video QA prompts as VQA does; its media are clips instead of images. The synthetic tasks
# prompt as their training text reads (flamingo_jax.data.synthetic.training_text), in any style.
for _style in FORMATS.values():
  _style["video_vqa"] = _style["vqa"]
  _style.update(synthetic_caption=Format(""),
                synthetic_vqa=Format("Question: {question} Answer:", " "),
                synthetic_binding=Format("This is a", " ", end="."))

ZERO_SHOT_TEXT_EXAMPLES = 2


def prompt_tokens(format_: Format, support: list[tuple[str | None, str]], query: str | None,
                  vocabulary: seqio.Vocabulary, text_only_support: bool = False) -> np.ndarray:
  """int32 [n]: the prompt of support examples [(question, answer)] and a query question.

  With `text_only_support`, the support examples carry no `<image>` (zero-shot mode); the
  prompt then holds one image, the query's.
  """
  ids = preprocess.special_ids(vocabulary)
  tokens = [] if ids.bos is None else [ids.bos]
  for question, answer in support:
    if not text_only_support:
      tokens.append(ids.media)
    tokens += vocabulary.encode(format_.text(question, answer)) + [ids.eoc]
  tokens += [ids.media] + vocabulary.encode(format_.text(query))
  return np.asarray(tokens, np.int32)


def answer_tokens(format_: Format, answer: str, vocabulary: seqio.Vocabulary) -> list[int]:
  """A candidate answer as the tokens that follow the query text, ending with `<EOC>` so that a
  candidate's score covers where the answer stops (close-ended scoring)."""
  return vocabulary.encode(format_.answer(answer)) + [preprocess.special_ids(vocabulary).eoc]


def postprocess(text: str, kind: str) -> str:
  """A generated continuation -> the answer: the text before a new question or line; VQA
  answers (and bound words) also stop at the first sentence end (OpenFlamingo's
  postprocessing)."""
  for marker in ("Question", "Output", "\n"):
    text = text.split(marker, 1)[0]
  if kind in ("vqa", "video_vqa", "binding"):
    text = text.split(".", 1)[0]
  return text.strip()

