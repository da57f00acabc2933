"""Held-out synthetic benchmarks as files (`datasets.read_synthetic`), so that the embedded demo
is scored by the same harness as COCO or VQAv2.

    write_benchmarks(directory, image_size=32)
    harness.evaluate(model, params, config, vocabulary, "synthetic_binding",
                     f"{directory}/synthetic_binding", shots=8)

- synthetic_caption: query captions from the "test" split, support from "validation"; CIDEr.
- synthetic_vqa: one question per scene, likewise; VQA accuracy (one answer, repeated ten
  times as annotators would agree on an exact scene).
- synthetic_binding: episodes of `ways` made-up words, each bound to a kind of object by
  `max_shots / ways` support images (flamingo_jax.data.synthetic.binding_example); the query
  is a new image of one of them. The support is ordered so that every even-length prefix shows
  each word equally often, so N shots is a fair N-shot episode. Accuracy of the generated word.

Training uses the "train" split only, so every scene here is new to the model.
"""

import json
import os

import numpy as np
from PIL import Image

from flamingo_jax.data import synthetic

VQA_ANSWERS = 10  # The official VQA files have ten annotators' answers per question.


def _save(directory: str, name: str, pixels: np.ndarray) -> str:
  Image.fromarray(pixels).save(os.path.join(directory, "images", name))
  return os.path.join("images", name)


def balanced_order(labels: list, rng: np.random.Generator) -> list[int]:
  """Indices of `labels` such that every prefix of length k * (number of distinct labels) holds
  each label k times: rounds of one of each, in a random order per round."""
  groups = {}
  for i, label in enumerate(labels):
    groups.setdefault(label, []).append(i)
  rounds = zip(*groups.values(), strict=True)
  return [int(i) for round_ in rounds for i in rng.permutation(round_)]


def caption_records(directory: str, seed: int, split: str, count: int,
                    image_size: int) -> list[dict]:
  records = []
  for i in range(count):
    example = synthetic.pair_example(seed, split, i, image_size)
    records.append({"id": f"{split}-{i}", "question": None, "answers": [example["text"]],
                    "images": [_save(directory, f"{split}-{i}.png", example["image"])]})
  return records


def vqa_records(directory: str, seed: int, split: str, count: int, image_size: int) -> list[dict]:
  records = []
  for i in range(count):
    example = synthetic.vqa_example(seed, split, i, image_size)
    records.append({"id": f"{split}-{i}", "question": example["question"],
                    "answers": [example["answer"]] * VQA_ANSWERS,
                    "images": [_save(directory, f"{split}-{i}.png", example["image"])]})
  return records


def binding_records(directory: str, seed: int, count: int, image_size: int, ways: int,
                    max_shots: int, name_colours: bool = False) -> list[dict]:
  if max_shots % ways:
    raise ValueError(f"max_shots {max_shots} must be a multiple of ways {ways}")
  rng = np.random.default_rng(seed)
  records = []
  for i in range(count):
    # An episode's words exist only in its support examples: at least one of each, even when
    # the evaluation shows none (0 shots only).
    example = synthetic.binding_example(seed, "test", i, image_size, ways=ways,
                                        shots=max(max_shots // ways, 1),
                                        name_colours=name_colours)
    *support_images, query_image = example["images"]
    words = [text.removeprefix("This is a ").removesuffix(".") for text in example["texts"][:-1]]
    support = [{"id": f"test-{i}-support-{j}", "question": None, "answers": [words[j]],
                "images": [_save(directory, f"test-{i}-{j}.png", support_images[j])]}
               for j in balanced_order(words, rng)]
    records.append({"id": f"test-{i}", "question": None, "answers": [example["answer"]],
                    "images": [_save(directory, f"test-{i}.png", query_image)],
                    "support": support})
  return records


def write_benchmarks(directory: str, image_size: int, seed: int = 0, num_queries: int = 100,
                     num_support: int = 200, ways: int = 2, max_shots: int = 8,
                     name_colours: bool = False) -> dict[str, str]:
  """Writes the three benchmarks under `directory`; returns {benchmark name: its data_dir}.
  name_colours: binding episodes name their kinds' colours (`synthetic.binding_example`)."""
  written = {}
  for name in ("synthetic_caption", "synthetic_vqa", "synthetic_binding"):
    data_dir = written[name] = os.path.join(directory, name)
    os.makedirs(os.path.join(data_dir, "images"), exist_ok=True)
    if name == "synthetic_binding":
      splits = {"test": binding_records(data_dir, seed, num_queries, image_size, ways,
                                        max_shots, name_colours)}
    else:
      make = caption_records if name == "synthetic_caption" else vqa_records
      splits = {"test": make(data_dir, seed, "test", num_queries, image_size),
                "support": make(data_dir, seed, "validation", num_support, image_size)}
    for split, records in splits.items():
      with open(os.path.join(data_dir, f"{split}.json"), "w") as f:
        json.dump(records, f)
  return written
