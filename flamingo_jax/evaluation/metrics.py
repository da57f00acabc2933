"""Benchmark metrics, computed as the official tools compute them.

- VQA accuracy (VQAv2, OK-VQA, TextVQA, VizWiz): the official VQA evaluation (`vqaEval.py` of
  the VQA API, GT-Vision-Lab/VQA). Answers are normalised, then a prediction scores
  min(1, #annotators who gave it / 3) averaged over the 10 subsets of 9 annotators out of 10.
  Two rules of what gets normalised (`VQA_RULES`, see `vqa_accuracy`): the evaluation
  server's, and OpenFlamingo's copy, to reproduce its tables.
- Captions (COCO, Flickr30k): CIDEr (CIDEr-D, as the COCO server reports it) and BLEU-4 from
  pycocoevalcap, after its PTB tokenisation (Stanford CoreNLP, needs `java`).
- ROC-AUC (HatefulMemes), top-1 accuracy (ImageNet), exact-match accuracy (MSVD-QA, MSRVTT-QA).

Every metric returns a fraction (VQA accuracy 0.676, CIDEr 1.138); the paper reports 100 times
that.
"""

import re
from typing import Hashable, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from sklearn import metrics as sk_metrics

# The VQA answer normalisation, rule by rule as `vqaEval.py` applies it.

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">",
               "<", "@", "`", ",", "?", "!")
DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its "(?!<=" is a lookahead (a typo for a
# lookbehind) that always holds before a ".", so what it does is drop a "." not followed by a
# digit: "yes." -> "yes", "e.g" -> "eg", "1.5" and ".5" kept.
PERIOD = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (32) where `re.sub` takes its count: at most 32 periods go.
MAX_PERIODS_STRIPPED = 32
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
# The official table, as data. Words are looked up after lowercasing, so its capitalised keys
# ("Im", "Ive", ...) never match; "somebody'd" maps to "somebodyd" there too.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}


def _strip_punctuation(text: str) -> str:
  """processPunctuation: a mark that touches a space somewhere in the text ("yes !") is
  deleted everywhere, and so is every mark once the text has a comma between digits ("1,000"
  -> "1000"); otherwise each of its occurrences becomes a space ("hot-dog" -> "hot dog").
  Then periods not followed by a digit go."""
  # The official code tests the text as it came in, not as it is being rewritten.
  delete_all = DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for mark in PUNCTUATION:
    touches_space = f"{mark} " in text or f" {mark}" in text
    out = out.replace(mark, "" if delete_all or touches_space else " ")
  return PERIOD.sub("", out, count=MAX_PERIODS_STRIPPED)


def _map_words(text: str) -> str:
  """processDigitArticle: lowercase; number words -> digits; articles dropped; contractions
  restored ("dont" -> "don't"); runs of whitespace -> one space."""
  words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
  return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def _clean_whitespace(answer: str) -> str:
  return answer.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
  """An answer as the official VQA evaluation compares it (punctuation, then words)."""
  return _map_words(_strip_punctuation(_clean_whitespace(answer)))


# "server": vqaEval.py as of GT-Vision-Lab/VQA a4f1afd ("updated for v2.0", 2017), the code
#   of the VQA challenge's evaluation server: the prediction is always normalised; the
#   annotators' answers are compared as stored (the official files store them normalised),
#   with only their punctuation processed when they disagree. (Master's later a013f00, 2021,
#   normalises nothing when the annotators agree, so "Yes" against ten "yes" scores 0; no
#   published table uses it.)
# "open_flamingo": OpenFlamingo 2.0.1's copy (open_flamingo/eval/vqa_metric.py), which fully
#   normalises the prediction and every answer, always.
VQA_RULES = ("server", "open_flamingo")


def vqa_accuracy(prediction: str, answers: Sequence[str], rule: str = "server") -> float:
  """VQA accuracy of one prediction against its annotators' answers (10 in the official sets).

  For each annotator, the other annotators who gave the prediction count: min(1, count / 3);
  the accuracy is the mean over annotators. So with 10 answers, 1 / 2 / 3 / 4 matching give
  0.3 / 0.6 / 0.9 / 1.0. What is normalised before comparing depends on `rule` (`VQA_RULES`).
  """
  if not answers:
    raise ValueError("vqa_accuracy needs at least one reference answer, got none")
  prediction = normalize_vqa_answer(prediction)
  if rule == "server":
    if len(set(answers)) > 1:
      answers = [_strip_punctuation(answer) for answer in answers]
  elif rule == "open_flamingo":
    answers = [normalize_vqa_answer(answer) for answer in answers]
  else:
    raise ValueError(f"Unknown VQA accuracy rule {rule!r}; choose from {VQA_RULES}.")
  matches = [answer == prediction for answer in answers]
  total = sum(matches)
  return sum(min(1.0, (total - match) / 3) for match in matches) / len(answers)


def mean_vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                      rule: str = "server") -> float:
  """The mean of `vqa_accuracy` over questions: the benchmark's VQA accuracy."""
  _check_lengths(predictions, answers)
  return sum(vqa_accuracy(p, a, rule) for p, a in zip(predictions, answers)) / len(predictions)


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> float:
  """Fraction of predictions equal to their one answer, both normalised as VQA answers are
  ("A dog." matches "dog"). Video QA (MSVD-QA, MSRVTT-QA) has no official tool; its answers
  are single lowercase words, so this is the usual top-1 accuracy on them."""
  return top1_accuracy([normalize_vqa_answer(p) for p in predictions],
                       [normalize_vqa_answer(a) for a in answers])


def caption_scores(predictions: Mapping[Hashable, str],
                   references: Mapping[Hashable, Sequence[str]]) -> dict[str, float]:
  """{image_id: caption}, {image_id: [reference captions]} -> {"CIDEr": .., "BLEU-4": ..}.

  As the COCO caption evaluation (pycocoevalcap's COCOEvalCap) computes them: both sides PTB
  tokenised (lowercased, punctuation dropped), then CIDEr-D (whose n-gram weights come from
  the references of all the images scored) and corpus BLEU-4.
  """
  if predictions.keys() != references.keys():
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    raise ValueError(f"predictions and references cover different images: {len(missing)} "
                     f"without a prediction (e.g. {missing[:3]}), {len(extra)} without "
                     f"references (e.g. {extra[:3]})")
  empty = [k for k, captions in references.items() if not captions]
  if empty:
    raise ValueError(f"{len(empty)} images have no reference caption, e.g. {empty[:3]}")
  tokenizer = PTBTokenizer()
  res = tokenizer.tokenize({k: [{"caption": c}] for k, c in predictions.items()})
  gts = tokenizer.tokenize({k: [{"caption": c} for c in captions]
                            for k, captions in references.items()})
  cider, _ = Cider().compute_score(gts, res)
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  return {"CIDEr": float(cider), "BLEU-4": float(bleu[3])}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
  """Area under the ROC curve of scores (higher = more likely positive) for 0/1 labels: the
  chance that a random positive outscores a random negative, ties counting 1/2."""
  _check_lengths(scores, labels)
  return float(sk_metrics.roc_auc_score(labels, scores))


def top1_accuracy(predictions: Sequence, labels: Sequence) -> float:
  """Fraction of predictions equal to their label (class indices, or any comparable values)."""
  _check_lengths(predictions, labels)
  return sum(p == l for p, l in zip(predictions, labels)) / len(labels)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
  if not predictions:
    raise ValueError("no predictions to score")
