"""Readers of the benchmarks' official files -> `Example`s: paths and text, no pixels.

Every reader is `read_x(data_dir, split) -> list[Example]`, with the official files laid out
under `data_dir` as the releases unpack them (each reader's docstring names its files). A
split with no public labels (a test split) gives examples with no answers and no label.
"""

import dataclasses
import json
import os
import re
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Example:
  """One benchmark example, the same shape for every task kind.

  id: unique within its split, as a string (COCO image id, question id, meme id, ...), so that
    predictions can be keyed {example.id: prediction}.
  image_paths: [M] image paths (M = 1), or for video QA the frames of one clip in time order.
  question: the question (VQA, video QA), or the meme's text (HatefulMemes); None otherwise.
  answers: the reference captions (captioning), the annotators' answers with repeats (VQA, 10
    in the official sets), the one answer (video QA), or the class name (classification);
    () where the split has no labels.
  label: the class index (classification); None otherwise or where the split has no labels.
  support: the query's own support examples, for episodic tasks whose support only holds for
    its query (novel-word binding: the words are made up per episode); () otherwise.
  """
  id: str
  image_paths: tuple[str, ...]
  question: str | None = None
  answers: tuple[str, ...] = ()
  label: int | None = None
  support: tuple["Example", ...] = ()


def _load_json(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _stem(file_name: str) -> str:
  return os.path.splitext(os.path.basename(file_name))[0]


# Captioning: Karpathy's splits (caption_datasets.zip).


def _read_karpathy(data_dir: str, split: str, file_name: str,
                   locate: Callable[[dict], tuple[str, str]]) -> list[Example]:
  """`file_name`: {"images": [{"split", "filename", "sentences": [{"raw", ...}], ...}]}; the
  splits are "train", "restval", "val" and "test". `locate(image)` -> (id, path under
  data_dir)."""
  images = _load_json(os.path.join(data_dir, file_name))["images"]
  examples = []
  for image in images:
    if image["split"] == split:
      id_, path = locate(image)
      examples.append(Example(id_, (os.path.join(data_dir, path),),
                              answers=tuple(s["raw"] for s in image["sentences"])))
  if not examples:
    splits = sorted({image["split"] for image in images})
    raise ValueError(f"no images of split {split!r} in {file_name}; it has {splits}")
  return examples


def read_coco(data_dir: str, split: str) -> list[Example]:
  """COCO captions, Karpathy split: `dataset_coco.json`; images at `<filepath>/<filename>`
  (train2014/COCO_train2014_*.jpg, val2014/...). Ids are the COCO image ids ("cocoid")."""
  return _read_karpathy(
      data_dir, split, "dataset_coco.json",
      lambda image: (str(image["cocoid"]), os.path.join(image["filepath"], image["filename"])))


def read_flickr30k(data_dir: str, split: str) -> list[Example]:
  """Flickr30k, Karpathy split: `dataset_flickr30k.json`; images in `flickr30k-images/` (the
  official archive's folder). Ids are the Flickr photo ids, the file names' stems."""
  return _read_karpathy(
      data_dir, split, "dataset_flickr30k.json",
      lambda image: (_stem(image["filename"]),
                     os.path.join("flickr30k-images", image["filename"])))


# VQA.


def _read_vqa_api(data_dir: str, split: str, questions_file: str,
                  annotations_file: str) -> list[Example]:
  """Questions {"questions": [{"question_id", "image_id", "question"}]} and annotations
  {"annotations": [{"question_id", "answers": [{"answer", ...}] x 10, ...}]} in the format of
  the VQA API; no annotations for test splits. COCO images at
  `<image folder>/COCO_<image folder>_<image_id:012d>.jpg`, the folder being the split's
  (test-dev2015 is a subset of test2015's images)."""
  questions = _load_json(os.path.join(data_dir, questions_file))["questions"]
  labelled = not split.startswith("test")
  answers = {}
  if labelled:
    for annotation in _load_json(os.path.join(data_dir, annotations_file))["annotations"]:
      answers[annotation["question_id"]] = tuple(a["answer"] for a in annotation["answers"])
  folder = split if labelled else "test2015"
  return [Example(str(q["question_id"]),
                  (os.path.join(data_dir, folder, f"COCO_{folder}_{q['image_id']:012d}.jpg"),),
                  question=q["question"],
                  answers=answers[q["question_id"]] if labelled else ())
          for q in questions]


def read_vqav2(data_dir: str, split: str) -> list[Example]:
  """VQAv2: `v2_OpenEnded_mscoco_<split>_questions.json` and
  `v2_mscoco_<split>_annotations.json`; splits train2014, val2014, test-dev2015, test2015."""
  return _read_vqa_api(data_dir, split, f"v2_OpenEnded_mscoco_{split}_questions.json",
                       f"v2_mscoco_{split}_annotations.json")


def read_okvqa(data_dir: str, split: str) -> list[Example]:
  """OK-VQA: `OpenEnded_mscoco_<split>_questions.json` and `mscoco_<split>_annotations.json`;
  splits train2014, val2014. Answers are the annotations' "answer" field (the official
  evaluation's; "raw_answer" is the unprocessed one)."""
  return _read_vqa_api(data_dir, split, f"OpenEnded_mscoco_{split}_questions.json",
                       f"mscoco_{split}_annotations.json")


def read_textvqa(data_dir: str, split: str) -> list[Example]:
  """TextVQA: `TextVQA_0.5.1_<split>.json`, {"data": [{"question_id", "question", "image_id",
  "answers": [str] x 10 (absent in test), ...}]}; splits train, val, test. Images at
  `train_images/<image_id>.jpg` for train and val (train_val_images.zip), `test_images/` for
  test."""
  folder = "test_images" if split == "test" else "train_images"
  return [Example(str(entry["question_id"]),
                  (os.path.join(data_dir, folder, f"{entry['image_id']}.jpg"),),
                  question=entry["question"], answers=tuple(entry.get("answers", ())))
          for entry in _load_json(os.path.join(data_dir, f"TextVQA_0.5.1_{split}.json"))["data"]]


def read_vizwiz(data_dir: str, split: str) -> list[Example]:
  """VizWiz VQA: `<split>.json`, [{"image", "question", "answers": [{"answer",
  "answer_confidence"}] x 10 (absent in test), "answerable", "answer_type"}]; splits train,
  val, test; images at `<split>/<image>`. Ids are the image file names (one question an image),
  as the submission format keys answers."""
  return [Example(entry["image"], (os.path.join(data_dir, split, entry["image"]),),
                  question=entry["question"],
                  answers=tuple(a["answer"] for a in entry.get("answers", ())))
          for entry in _load_json(os.path.join(data_dir, f"{split}.json"))]


# Classification.

HATEFUL_MEMES_CLASSES = ("no", "yes")  # The answer to "Is it hateful?", by label.


def read_hateful_memes(data_dir: str, split: str) -> list[Example]:
  """HatefulMemes: `<split>.jsonl`, lines {"id", "img": "img/<id>.png", "label": 0 | 1 (absent
  in unlabelled test files), "text"}; splits train, dev, test (first release), dev_seen,
  dev_unseen, test_seen, test_unseen. The meme's text is the question; answers the class name
  ("yes" = hateful)."""
  examples = []
  with open(os.path.join(data_dir, f"{split}.jsonl"), encoding="utf-8") as f:
    for line in f:
      if line.strip():
        meme = json.loads(line)
        label = meme.get("label")
        examples.append(Example(
            str(meme["id"]), (os.path.join(data_dir, meme["img"]),), question=meme["text"],
            answers=() if label is None else (HATEFUL_MEMES_CLASSES[label],), label=label))
  return examples


IMAGENET_CLASSES_FILE = "LOC_synset_mapping.txt"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def imagenet_classes(data_dir: str) -> tuple[tuple[str, str], ...]:
  """(wnid, name) by label, from `LOC_synset_mapping.txt` (ILSVRC 2012 as the Kaggle release
  ships it): a line a class in label order, `<wnid> <name>[, <synonym>...]`; the name is the
  first synonym. Write the same format to use other names (e.g. CLIP's curated ones)."""
  with open(os.path.join(data_dir, IMAGENET_CLASSES_FILE), encoding="utf-8") as f:
    entries = [line.strip().split(" ", 1) for line in f if line.strip()]
  return tuple((wnid, names.split(",")[0].strip()) for wnid, names in entries)


def read_imagenet(data_dir: str, split: str) -> list[Example]:
  """ImageNet (ILSVRC 2012): `<split>/<wnid>/*.JPEG` (val sorted into class folders, as for
  train) and `LOC_synset_mapping.txt` (`imagenet_classes`). Ids are the file names' stems."""
  classes = imagenet_classes(data_dir)
  labels = {wnid: label for label, (wnid, _) in enumerate(classes)}
  split_dir = os.path.join(data_dir, split)
  wnids = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
  unknown = [wnid for wnid in wnids if wnid not in labels]
  if unknown:
    raise ValueError(f"class folders of {split_dir} missing from {IMAGENET_CLASSES_FILE}: "
                     f"{unknown[:5]}")
  examples = []
  for wnid in wnids:
    for name in sorted(os.listdir(os.path.join(split_dir, wnid))):
      if name.lower().endswith(IMAGE_EXTENSIONS):
        label = labels[wnid]
        examples.append(Example(_stem(name), (os.path.join(split_dir, wnid, name),),
                                answers=(classes[label][1],), label=label))
  return examples


# Video QA: MSVD-QA and MSRVTT-QA (Xu et al. 2017), as frames extracted ahead of time.


def _natural_key(name: str) -> list:
  """"frame_10.jpg" after "frame_9.jpg"."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_video_qa(data_dir: str, split: str, video_prefix: str) -> list[Example]:
  """`<split>_qa.json`: [{"id", "question", "answer", "video_id", ...}]; frames at
  `frames/<video>/*.jpg`, <video> being `<video_prefix><video_id>` (the release's video names)
  or, in repackaged files with a "video" field, that name without its extension."""
  frames = {}
  examples = []
  for qa in _load_json(os.path.join(data_dir, f"{split}_qa.json")):
    video = _stem(qa["video"]) if "video" in qa else f"{video_prefix}{qa['video_id']}"
    if video not in frames:
      video_dir = os.path.join(data_dir, "frames", video)
      if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"no frames folder {video_dir} for question {qa['id']}")
      names = sorted((n for n in os.listdir(video_dir) if n.lower().endswith(".jpg")),
                     key=_natural_key)
      if not names:
        raise FileNotFoundError(f"no .jpg frames in {video_dir}")
      frames[video] = tuple(os.path.join(video_dir, n) for n in names)
    examples.append(Example(str(qa["id"]), frames[video], question=qa["question"],
                            answers=(qa["answer"],)))
  return examples


def read_msvdqa(data_dir: str, split: str) -> list[Example]:
  """MSVD-QA: `<split>_qa.json` (train, val, test); videos named vid1..vid1970 (the clips
  renamed by the release's youtube_mapping.txt), frames at `frames/vid<video_id>/*.jpg`."""
  return _read_video_qa(data_dir, split, "vid")


def read_msrvttqa(data_dir: str, split: str) -> list[Example]:
  """MSRVTT-QA: `<split>_qa.json` (train, val, test); MSR-VTT's videos video0..video9999,
  frames at `frames/video<video_id>/*.jpg`."""
  return _read_video_qa(data_dir, split, "video")


# The embedded synthetic benchmarks (flamingo_jax.evaluation.synthetic writes them).


def _synthetic_example(record: dict, data_dir: str) -> Example:
  return Example(record["id"], tuple(os.path.join(data_dir, p) for p in record["images"]),
                 record.get("question"), tuple(record["answers"]),
                 support=tuple(_synthetic_example(s, data_dir)
                               for s in record.get("support", ())))


def read_synthetic(data_dir: str, split: str) -> list[Example]:
  """`<split>.json`: [{"id", "images": [path under data_dir], "question" (or null), "answers",
  "support": [records like this one] (episodic tasks only)}]."""
  return [_synthetic_example(r, data_dir)
          for r in _load_json(os.path.join(data_dir, f"{split}.json"))]
