"""Metrics against hand-worked values from the official definitions, and against pycocoevalcap's
own scorers on a COCO-format results file."""

import contextlib
import importlib.util
import io
import json
import pathlib
import types

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools.coco import COCO

from flamingo_jax.evaluation import metrics

# VQA answer normalisation, one rule at a time (vqaEval.py: processPunctuation, then
# processDigitArticle).


@pytest.mark.parametrize("mark", metrics.PUNCTUATION)
def test_each_mark_between_letters_becomes_a_space(mark):
  # No space touches the mark and no digit,digit: the mark is replaced by " ".
  assert metrics.normalize_vqa_answer(f"red{mark}car") == "red car"


@pytest.mark.parametrize("mark", metrics.PUNCTUATION)
def test_each_mark_touching_a_space_is_deleted(mark):
  # "red{mark} car" has "{mark} " -> the mark is deleted: "red car"; "red {mark}car" likewise
  # has " {mark}".
  assert metrics.normalize_vqa_answer(f"red{mark} car") == "red car"
  assert metrics.normalize_vqa_answer(f"red {mark}car") == "red car"


@pytest.mark.parametrize("answer, expected", [
    # A mark touching a space anywhere is deleted everywhere, also where it is glued:
    # "a-b - c" has " -", so both "-" go: "ab  c" -> split/join "ab c".
    ("a-b - c", "ab c"),
    # The test reads the incoming text, not the rewritten one: in "x;-b-c" neither ";" nor "-"
    # touches a space, so ";" -> " " ("x -b-c") and then each "-" -> " " ("x  b c"); testing
    # the rewritten text would find " -" and delete them ("x bc").
    ("x;-b-c", "x b c"),
    # A comma between digits deletes every mark, commas included: "1,000" -> "1000", and the
    # glued "-" of "a-b" is deleted instead of spaced: "ab 1000".
    ("1,000", "1000"),
    ("a-b 1,000", "ab 1000"),
    ("1, 000", "1 000"),  # No digit,digit ("1, 0"): ", " touches a space -> deleted.
    # Marks outside the list stay: apostrophe, colon, ampersand, percent.
    ("10:30", "10:30"),
    ("it's", "it's"),
    ("r&b 50%", "r&b 50%"),
])
def test_punctuation_rules(answer, expected):
  assert metrics.normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize("answer, expected", [
    ("yes.", "yes"),  # A period not followed by a digit goes.
    ("e.g", "eg"),
    ("u.s.a.", "usa"),
    ("1.5", "1.5"),  # Followed by a digit: stays (a decimal point).
    (".5", ".5"),
    ("5.", "5"),
    # Only 32 periods are stripped (re.UNICODE == 32 passed as sub's count): of 33 the last
    # stays.
    ("ok" + "." * 33, "ok."),
])
def test_period_rules(answer, expected):
  assert metrics.normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize("word, digit", metrics.NUMBER_WORDS.items())
def test_number_words_become_digits(word, digit):
  assert metrics.normalize_vqa_answer(f"{word.upper()} cats") == f"{digit} cats"


def test_number_words_beyond_ten_stay():
  assert metrics.normalize_vqa_answer("eleven") == "eleven"
  assert metrics.normalize_vqa_answer("twenty one") == "twenty 1"


@pytest.mark.parametrize("answer, expected", [
    ("a dog", "dog"), ("An apple", "apple"), ("THE cat", "cat"),
    ("the a an", ""),  # Every word an article: nothing left.
    ("theater", "theater"),  # Whole words only.
    ("  two \t  dogs  ", "2 dogs"),  # Whitespace runs collapse; ends are trimmed.
])
def test_articles_case_and_spaces(answer, expected):
  assert metrics.normalize_vqa_answer(answer) == expected


@pytest.mark.parametrize("answer, expected", [
    ("dont", "don't"),  # Apostrophe restored.
    ("Isnt", "isn't"),  # After lowercasing.
    ("couldnt've", "couldn't've"),  # Double contractions, either apostrophe missing.
    ("couldn'tve", "couldn't've"),
    ("twas", "'twas"),  # Leading apostrophe.
    ("yall'll", "y'all'll"),
    ("oclock", "o'clock"),
    ("let's", "let's"),  # Identity entry.
    ("somebody'd", "somebodyd"),  # The table's reversed entry, kept as official.
    ("Im", "im"),  # Capitalised keys never match: words are lowercased first.
    ("i dont know.", "i don't know"),  # Period stripped before the lookup.
    ("wont-stop", "won't stop"),  # "-" spaced, then each word looked up.
])
def test_contractions(answer, expected):
  assert metrics.normalize_vqa_answer(answer) == expected


def test_contractions_table_is_the_official_one():
  # 120 entries in vqaEval.py; spot-check both ends and the odd ones.
  assert len(metrics.CONTRACTIONS) == 120
  assert metrics.CONTRACTIONS["aint"] == "ain't"
  assert metrics.CONTRACTIONS["youve"] == "you've"
  assert metrics.CONTRACTIONS["'ow'sat"] == "'ow's'at"


# VQA accuracy: for each of the n annotators, min(1, (#others matching) / 3), averaged.


@pytest.mark.parametrize("matching, expected", [
    # 0 of 10: every term 0.
    (0, 0.0),
    # 1 of 10: left out itself -> 0 others match -> 0; the 9 others each see 1 -> 1/3.
    # (0 + 9 * 1/3) / 10 = 3 / 10 = 0.3.
    (1, 0.3),
    # 2 of 10: the 2 each see 1 other -> 1/3; the 8 others see 2 -> 2/3.
    # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10 = 0.6.
    (2, 0.6),
    # 3 of 10: the 3 see 2 -> 2/3; the 7 see 3 -> 1. (3 * 2/3 + 7) / 10 = 9 / 10 = 0.9.
    (3, 0.9),
    # 4 of 10: the 4 see 3 -> 1; the 6 see 4 -> min(1, 4/3) = 1. 10 / 10 = 1.
    (4, 1.0),
    (10, 1.0),
])
def test_vqa_accuracy_averages_over_leave_one_out_subsets(matching, expected):
  answers = ["red"] * matching + ["blue", "green"] * 5
  answers = answers[:10]
  assert answers.count("red") == matching
  assert metrics.vqa_accuracy("red", answers) == pytest.approx(expected)


def test_vqa_accuracy_normalises_when_annotators_disagree():
  # Normalised: "Two." -> "2"; answers "two", "2", "2 " -> "2", "2", "2"; 3 match -> 0.9.
  answers = ["two", "2", "2 ", "3", "3", "3", "4", "4", "4", "4"]
  assert metrics.vqa_accuracy("Two.", answers, "open_flamingo") == pytest.approx(0.9)
  # The server cleans only the punctuation of disagreeing answers: "two" and "2 " stay, so
  # "Two." -> "2" matches one answer -> 0.3.
  assert metrics.vqa_accuracy("Two.", answers) == pytest.approx(0.3)
  # "the hot-dog" -> "hot dog" matches "hot dog" (2 of 10 under OpenFlamingo's rule, where
  # "a hot dog" loses its article) -> 0.6; the server keeps "a hot dog" -> 1 of 10 -> 0.3.
  answers = ["hot dog", "a hot dog", "sandwich", "food"] + ["bun"] * 6
  assert metrics.vqa_accuracy("the hot-dog", answers, "open_flamingo") == pytest.approx(0.6)
  assert metrics.vqa_accuracy("the hot-dog", answers) == pytest.approx(0.3)


@pytest.mark.parametrize("rule", metrics.VQA_RULES)
def test_vqa_accuracy_always_normalises_the_prediction(rule):
  # Ten annotators agree: the prediction is still normalised, under either rule.
  assert metrics.vqa_accuracy("yes", ["yes"] * 10, rule) == 1.0
  assert metrics.vqa_accuracy("Yes", ["yes"] * 10, rule) == 1.0
  assert metrics.vqa_accuracy("yes.", ["yes"] * 10, rule) == 1.0
  assert metrics.vqa_accuracy("two", ["2"] * 10, rule) == 1.0
  assert metrics.vqa_accuracy("\tyes\n", ["yes"] * 10, rule) == 1.0


def test_the_servers_rule_leaves_unanimous_answers_raw():
  # Unanimous answers are compared as stored (the official files store them normalised):
  # "two" x 10 never matches a prediction, which is normalised to "2".
  assert metrics.vqa_accuracy("two", ["two"] * 10) == 0.0
  assert metrics.vqa_accuracy("two", ["two"] * 10, "open_flamingo") == 1.0
  with pytest.raises(ValueError, match="rule"):
    metrics.vqa_accuracy("two", ["2"], "lenient")


def open_flamingo_vqa_eval():
  """OpenFlamingo 2.0.1's VQAEval (open_flamingo/eval/vqa_metric.py), loaded from its file so
  that the package's model code (torch, open_clip) is not imported."""
  origin = importlib.util.find_spec("open_flamingo").origin
  spec = importlib.util.spec_from_file_location(
      "open_flamingo_vqa_metric", pathlib.Path(origin).parent / "eval" / "vqa_metric.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.VQAEval


def reference_accuracies(cases, rule: str) -> list[float]:
  """VQA accuracy of each (prediction, answers) by the official code's own functions.

  "open_flamingo": OpenFlamingo's `VQAEval.evaluate`, run on the cases. "server": the loop of
  GT-Vision-Lab/VQA's vqaEval.py at a4f1afd around the same `processPunctuation` and
  `processDigitArticle` (OpenFlamingo's copies of them are the server's, word for word)."""
  vqa_eval_class = open_flamingo_vqa_eval()
  if rule == "open_flamingo":
    qa = {i: {"answers": [{"answer": a, "answer_id": j} for j, a in enumerate(answers)],
              "question_type": "what"} for i, (_, answers) in enumerate(cases)}
    results = {i: {"answer": prediction} for i, (prediction, _) in enumerate(cases)}
    evaluator = vqa_eval_class(types.SimpleNamespace(qa=qa),
                               types.SimpleNamespace(qa=results, getQuesIds=lambda: list(results)),
                               n=10)
    with contextlib.redirect_stdout(io.StringIO()):
      evaluator.evaluate(list(qa))
    return [evaluator.evalQA[i] / 100 for i in range(len(cases))]
  tools = vqa_eval_class(None, None)
  accuracies = []
  for prediction, answers in cases:
    prediction = prediction.replace("\n", " ").replace("\t", " ").strip()
    prediction = tools.processDigitArticle(tools.processPunctuation(prediction))
    if len(set(answers)) > 1:
      answers = [tools.processPunctuation(a) for a in answers]
    matches = [a == prediction for a in answers]
    accuracies.append(sum(min(1, (sum(matches) - m) / 3) for m in matches) / len(answers))
  return accuracies


# Pieces of answers that exercise every rule: case, edge whitespace, punctuation touching a
# space or not, a comma between digits, periods, number words, articles, contractions.
ANSWER_PIECES = ["yes", "Yes", "no", "2", "two", "Two", "10", "ten", "1,000", "1.5", "a", "the",
                 "An", "dog", "dogs", "hot-dog", "hot dog", "dont", "don't", "isnt", "yes.",
                 "dog!", "(dog)", "dog ,", "e.g.", "red/blue", "  ", "\t", "\n", "?", "none",
                 "zero", "ma'am", "maam", "its", "it's", "3:00"]


def random_answer(rng: np.random.Generator) -> str:
  return " ".join(rng.choice(ANSWER_PIECES, size=int(rng.integers(1, 4))))


@pytest.mark.parametrize("rule", metrics.VQA_RULES)
def test_vqa_accuracy_matches_the_official_code_on_random_answers(rule):
  rng = np.random.default_rng(0)
  cases = []
  for _ in range(400):
    # Few distinct answers, so that predictions often match some: unanimous sets included.
    pool = [random_answer(rng) for _ in range(int(rng.integers(1, 4)))]
    answers = [str(rng.choice(pool)) for _ in range(10)]
    prediction = str(rng.choice(pool)) if rng.random() < 0.6 else random_answer(rng)
    cases.append((prediction, answers))
  ours = [metrics.vqa_accuracy(prediction, answers, rule) for prediction, answers in cases]
  np.testing.assert_allclose(ours, reference_accuracies(cases, rule), atol=1e-9)
  assert 0.1 < np.mean([a > 0 for a in ours]) < 0.9  # Matches and misses are both exercised.


def test_vqa_accuracy_with_fewer_answers():
  # 5 answers, 2 matching: the 2 see 1 -> 1/3, the 3 see 2 -> 2/3: (2/3 + 2) / 5 = 8/15.
  assert metrics.vqa_accuracy("cat", ["cat", "cat", "dog", "dog", "cow"]) == pytest.approx(8 / 15)
  with pytest.raises(ValueError, match="reference answer"):
    metrics.vqa_accuracy("cat", [])


def test_mean_vqa_accuracy():
  answers = ["red"] * 2 + ["blue"] * 8
  # (0.6 + 1.0 + 0.0) / 3.
  assert metrics.mean_vqa_accuracy(["red", "blue", "green"], [answers] * 3) == (
      pytest.approx(1.6 / 3))
  with pytest.raises(ValueError, match="2 predictions for 3"):
    metrics.mean_vqa_accuracy(["red", "blue"], [answers] * 3)


def test_exact_match_normalises_both_sides():
  # "A dog." -> "dog" = "dog"; "two" -> "2" = "2"; "cat" != "cow": 2 / 3.
  assert metrics.exact_match(["A dog.", "two", "cat"], ["dog", "2", "cow"]) == (
      pytest.approx(2 / 3))


# Captioning: our function against pycocoevalcap's scorers driven as COCOEvalCap drives them.

REFERENCES = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave.",
        "Man on a surfboard in the ocean."],
    2: ["Two dogs play with a frisbee in the park.", "A couple of dogs running on grass.",
        "Dogs chasing a frisbee on a lawn."],
    3: ["A plate of food with broccoli and rice.", "Broccoli and rice on a white plate."],
    4: ["A red bus driving down a city street.", "A double decker bus on the road.",
        "The red bus is on the street."],
}
PREDICTIONS = {1: "A man riding a wave on a surfboard.", 2: "Two dogs playing in the park!",
               3: "a plate of rice, and broccoli", 4: "A bus parked on a street."}


def _pycocoevalcap_scores(tmp_path):
  annotations = {
      "images": [{"id": i} for i in REFERENCES],
      "annotations": [{"image_id": i, "id": 10 * i + j, "caption": c}
                      for i, captions in REFERENCES.items() for j, c in enumerate(captions)],
  }
  results = [{"image_id": i, "caption": c} for i, c in PREDICTIONS.items()]
  (tmp_path / "captions.json").write_text(json.dumps(annotations))
  (tmp_path / "results.json").write_text(json.dumps(results))
  coco = COCO(str(tmp_path / "captions.json"))
  coco_results = coco.loadRes(str(tmp_path / "results.json"))
  ids = coco.getImgIds()
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in ids})
  res = tokenizer.tokenize({i: coco_results.imgToAnns[i] for i in ids})
  cider, _ = Cider().compute_score(gts, res)
  bleu, _ = Bleu(4).compute_score(gts, res)
  return cider, bleu[3]


def test_caption_scores_equal_pycocoevalcap(tmp_path):
  cider, bleu4 = _pycocoevalcap_scores(tmp_path)
  scores = metrics.caption_scores(PREDICTIONS, REFERENCES)
  assert cider > 0.1 and bleu4 > 0.1  # A comparison of non-trivial values.
  assert scores == {"CIDEr": pytest.approx(cider, abs=1e-12),
                    "BLEU-4": pytest.approx(bleu4, abs=1e-12)}


def test_caption_scores_sanity():
  # Identical up to case and punctuation (which PTB tokenisation drops): BLEU-4 = 1.
  references = {"a": ["a cat sits on the red mat"], "b": ["three elephants walk in the savanna"]}
  predictions = {"a": "A cat sits on the red mat.", "b": "Three elephants walk, in the savanna."}
  assert metrics.caption_scores(predictions, references)["BLEU-4"] == pytest.approx(1.0)
  # No shared word at all: both 0.
  scores = metrics.caption_scores({"a": "blue sky", "b": "green grass"}, references)
  assert scores["CIDEr"] == 0.0 and scores["BLEU-4"] == pytest.approx(0.0, abs=1e-6)


def test_caption_scores_need_the_same_images():
  with pytest.raises(ValueError, match="1 without a prediction"):
    metrics.caption_scores({1: "a cat"}, {1: ["a cat"], 2: ["a dog"]})


# Classification.


def test_roc_auc():
  # Positive/negative pairs (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes:
  # 3 / 4.
  assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  assert metrics.roc_auc([0.9, 0.2], [1, 0]) == 1.0
  assert metrics.roc_auc([0.2, 0.9], [1, 0]) == 0.0
  # A tie counts 1/2: pairs (0.5, 0.5) tie, (0.5, 0.1) yes: (0.5 + 1) / 2.
  assert metrics.roc_auc([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.75)


def test_top1_accuracy():
  assert metrics.top1_accuracy([3, 1, 2, 2], [3, 1, 0, 2]) == 0.75
  with pytest.raises(ValueError, match="no predictions"):
    metrics.top1_accuracy([], [])
