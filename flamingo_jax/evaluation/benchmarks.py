"""The paper's benchmarks by name: how to read one, what kind of task it is, how to score it.

    benchmark = BENCHMARKS["vqav2"]
    queries = benchmark.read(data_dir, benchmark.eval_split)      # [Example]
    support = benchmark.read(data_dir, benchmark.support_split)   # few-shot examples
    scores = benchmark.metric({e.id: answer for e, answer in ...}, queries)  # {"accuracy": ..}

What a prediction is, by metric: a generated string (captions, VQA, video QA), the predicted
class index (ImageNet), the score of "yes" (HatefulMemes: any monotone score, e.g. its
log-likelihood minus that of "no").
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from flamingo_jax.evaluation import datasets, metrics
from flamingo_jax.evaluation.datasets import Example

TASKS = ("caption", "vqa", "classification", "video_vqa", "binding")

Predictions = Mapping[str, Any]  # {example.id: prediction}


def _aligned(predictions: Predictions, examples: Sequence[Example]) -> list:
  """The predictions in the order of `examples`; every example needs one."""
  missing = [e.id for e in examples if e.id not in predictions]
  if missing:
    raise ValueError(f"{len(missing)} of {len(examples)} examples have no prediction, "
                     f"e.g. ids {missing[:3]}")
  return [predictions[e.id] for e in examples]


def _labelled(examples: Sequence[Example], field: str) -> None:
  if any(getattr(e, field) in (None, ()) for e in examples):
    raise ValueError(f"examples without {field} cannot be scored (a split with no public "
                     "labels?)")


def score_captions(predictions: Predictions, examples: Sequence[Example]) -> dict[str, float]:
  """{"CIDEr", "BLEU-4"} of generated captions against the examples' reference captions."""
  _labelled(examples, "answers")
  captions = dict(zip((e.id for e in examples), _aligned(predictions, examples)))
  return metrics.caption_scores(captions, {e.id: e.answers for e in examples})


def score_vqa(predictions: Predictions, examples: Sequence[Example],
              rule: str = "server") -> dict[str, float]:
  """{"accuracy"}: the official VQA accuracy of generated answers, by `rule`
  (`metrics.VQA_RULES`)."""
  _labelled(examples, "answers")
  return {"accuracy": metrics.mean_vqa_accuracy(_aligned(predictions, examples),
                                                [e.answers for e in examples], rule)}


def score_exact_match(predictions: Predictions, examples: Sequence[Example]) -> dict[str, float]:
  """{"accuracy"}: exact match of generated answers with the one answer (video QA, binding)."""
  _labelled(examples, "answers")
  return {"accuracy": metrics.exact_match(_aligned(predictions, examples),
                                          [e.answers[0] for e in examples])}


def score_top1(predictions: Predictions, examples: Sequence[Example]) -> dict[str, float]:
  """{"top-1"}: accuracy of predicted class indices."""
  _labelled(examples, "label")
  return {"top-1": metrics.top1_accuracy(_aligned(predictions, examples),
                                         [e.label for e in examples])}


def score_roc_auc(predictions: Predictions, examples: Sequence[Example]) -> dict[str, float]:
  """{"ROC-AUC"} of scores for the positive class (label 1) against the 0/1 labels."""
  _labelled(examples, "label")
  return {"ROC-AUC": metrics.roc_auc(_aligned(predictions, examples),
                                     [e.label for e in examples])}


def best_class(scores: np.ndarray) -> int:
  """Class log-likelihoods [C] -> the index of the most likely class (scored by top-1)."""
  return int(np.argmax(scores))


def yes_minus_no(scores: np.ndarray) -> float:
  """Log-likelihoods [2] of ("no", "yes") -> the score of "yes", monotone in its probability
  (scored by ROC-AUC)."""
  return float(scores[1] - scores[0])


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """read: (data_dir, split) -> [Example]. task: one of TASKS. metric: ({id: prediction},
  examples) -> {name: value}. support_split / eval_split: where few-shot examples come from
  and what is scored (the labelled split nearest to the paper's); an episodic benchmark has no
  support split, each query brings its own (`Example.support`). For classification, classes:
  data_dir -> the class names by label (the candidates to rank), and prediction: a query's
  class log-likelihoods [C] -> what its metric takes."""
  read: Callable[[str, str], list[Example]]
  task: str
  metric: Callable[[Predictions, Sequence[Example]], dict[str, float]]
  support_split: str | None
  eval_split: str
  classes: Callable[[str], tuple[str, ...]] | None = None
  prediction: Callable[[np.ndarray], Any] | None = None


def _imagenet_class_names(data_dir: str) -> tuple[str, ...]:
  return tuple(name for _, name in datasets.imagenet_classes(data_dir))


# Some of the paper's numbers come from test servers (VQAv2 test-dev, for one); eval_split is a
# split whose labels are public.
BENCHMARKS = {
    "coco": Benchmark(datasets.read_coco, "caption", score_captions, "train", "test"),
    "flickr30k": Benchmark(datasets.read_flickr30k, "caption", score_captions, "train", "test"),
    "vqav2": Benchmark(datasets.read_vqav2, "vqa", score_vqa, "train2014", "val2014"),
    "okvqa": Benchmark(datasets.read_okvqa, "vqa", score_vqa, "train2014", "val2014"),
    "textvqa": Benchmark(datasets.read_textvqa, "vqa", score_vqa, "train", "val"),
    "vizwiz": Benchmark(datasets.read_vizwiz, "vqa", score_vqa, "train", "val"),
    "hateful_memes": Benchmark(datasets.read_hateful_memes, "classification", score_roc_auc,
                               "train", "test_seen",
                               classes=lambda _: datasets.HATEFUL_MEMES_CLASSES,
                               prediction=yes_minus_no),
    "imagenet": Benchmark(datasets.read_imagenet, "classification", score_top1, "train", "val",
                          classes=_imagenet_class_names, prediction=best_class),
    "msvdqa": Benchmark(datasets.read_msvdqa, "video_vqa", score_exact_match, "train",
                        "test"),
    "msrvttqa": Benchmark(datasets.read_msrvttqa, "video_vqa", score_exact_match, "train",
                          "test"),
    # The embedded demo's held-out tasks on synthetic scenes (flamingo_jax.evaluation.synthetic).
    "synthetic_caption": Benchmark(datasets.read_synthetic, "caption", score_captions,
                                   "support", "test"),
    "synthetic_vqa": Benchmark(datasets.read_synthetic, "vqa", score_vqa, "support", "test"),
    "synthetic_binding": Benchmark(datasets.read_synthetic, "binding", score_exact_match, None,
                                   "test"),
}
