"""Each benchmark reader on tiny files written here in the official format, and the registry's
metrics on the examples they give."""

import json
import os

import numpy as np
import pytest

from flamingo_jax.evaluation import benchmarks, datasets
from flamingo_jax.evaluation.datasets import Example


def write_json(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(content))


def sentences(*raws):
  return [{"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": i}
          for i, raw in enumerate(raws)]


def test_coco_karpathy(tmp_path):
  write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
      {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0,
       "split": "test", "cocoid": 391895, "sentids": [0, 1],
       "sentences": sentences("A man riding a bike.", "A cyclist on a dirt road.")},
      {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "imgid": 1,
       "split": "train", "cocoid": 9, "sentids": [2], "sentences": sentences("A lunch box.")},
      {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "imgid": 2,
       "split": "restval", "cocoid": 42, "sentids": [3], "sentences": sentences("A dog.")},
  ]})
  assert datasets.read_coco(str(tmp_path), "test") == [Example(
      "391895", (str(tmp_path / "val2014" / "COCO_val2014_000000391895.jpg"),),
      answers=("A man riding a bike.", "A cyclist on a dirt road."))]
  assert [e.id for e in datasets.read_coco(str(tmp_path), "train")] == ["9"]
  assert [e.id for e in datasets.read_coco(str(tmp_path), "restval")] == ["42"]
  with pytest.raises(ValueError, match=r"'tset'.*\['restval', 'test', 'train'\]"):
    datasets.read_coco(str(tmp_path), "tset")


def test_flickr30k_karpathy(tmp_path):
  write_json(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
      {"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentids": [0, 1],
       "sentences": sentences("Two young guys outside.", "Two men in green shirts.")},
      {"filename": "1007129816.jpg", "imgid": 1, "split": "test", "sentids": [2],
       "sentences": sentences("A man with an orange hat.")},
  ]})
  assert datasets.read_flickr30k(str(tmp_path), "test") == [Example(
      "1007129816", (str(tmp_path / "flickr30k-images" / "1007129816.jpg"),),
      answers=("A man with an orange hat.",))]


def vqa_files(tmp_path, questions_name, annotations_name, subtype):
  """Two questions on two COCO images, in the VQA API's format, annotations in reverse order
  (they are joined by question id, not position)."""
  write_json(tmp_path / questions_name, {
      "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
      "data_subtype": subtype, "questions": [
          {"image_id": 42, "question": "What color is the bus?", "question_id": 420},
          {"image_id": 73, "question": "How many dogs?", "question_id": 730}]})
  if annotations_name:
    write_json(tmp_path / annotations_name, {
        "info": {}, "license": {}, "data_type": "mscoco", "data_subtype": subtype,
        "annotations": [
            {"question_id": 730, "image_id": 73, "question_type": "how many",
             "answer_type": "number", "multiple_choice_answer": "2",
             "answers": [{"answer": "2" if i < 7 else "two", "answer_confidence": "yes",
                          "answer_id": i + 1} for i in range(10)]},
            {"question_id": 420, "image_id": 42, "question_type": "what color",
             "answer_type": "other", "multiple_choice_answer": "red",
             "answers": [{"answer": "red", "raw_answer": "Red", "answer_confidence": "yes",
                          "answer_id": i + 1} for i in range(10)]}]})


def test_vqav2(tmp_path):
  vqa_files(tmp_path, "v2_OpenEnded_mscoco_val2014_questions.json",
            "v2_mscoco_val2014_annotations.json", "val2014")
  assert datasets.read_vqav2(str(tmp_path), "val2014") == [
      Example("420", (str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"),),
              question="What color is the bus?", answers=("red",) * 10),
      Example("730", (str(tmp_path / "val2014" / "COCO_val2014_000000000073.jpg"),),
              question="How many dogs?", answers=("2",) * 7 + ("two",) * 3)]


def test_vqav2_test_dev_has_no_answers_and_test2015_images(tmp_path):
  vqa_files(tmp_path, "v2_OpenEnded_mscoco_test-dev2015_questions.json", None, "test-dev2015")
  examples = datasets.read_vqav2(str(tmp_path), "test-dev2015")
  assert [e.answers for e in examples] == [(), ()]
  assert examples[0].image_paths == (
      str(tmp_path / "test2015" / "COCO_test2015_000000000042.jpg"),)


def test_okvqa(tmp_path):
  vqa_files(tmp_path, "OpenEnded_mscoco_val2014_questions.json",
            "mscoco_val2014_annotations.json", "val2014")
  examples = datasets.read_okvqa(str(tmp_path), "val2014")
  assert [(e.id, e.question, e.answers[0]) for e in examples] == [
      ("420", "What color is the bus?", "red"), ("730", "How many dogs?", "2")]


def test_textvqa(tmp_path):
  entry = {"question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901",
           "image_classes": ["Cassette deck"], "flickr_original_url": "", "flickr_300k_url": "",
           "image_width": 1024, "image_height": 664, "question_tokens": ["what"],
           "question_id": 34602, "set_name": "val", "answers": ["nous les gosses"] * 10}
  write_json(tmp_path / "TextVQA_0.5.1_val.json", {
      "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
      "data": [entry]})
  assert datasets.read_textvqa(str(tmp_path), "val") == [Example(
      "34602", (str(tmp_path / "train_images" / "003a8ae2ef43b901.jpg"),),
      question="what is the brand of this camera?", answers=("nous les gosses",) * 10)]
  test_entry = {k: v for k, v in entry.items() if k != "answers"}
  write_json(tmp_path / "TextVQA_0.5.1_test.json", {"data": [test_entry]})
  (example,) = datasets.read_textvqa(str(tmp_path), "test")
  assert example.answers == ()
  assert example.image_paths == (str(tmp_path / "test_images" / "003a8ae2ef43b901.jpg"),)


def test_vizwiz(tmp_path):
  write_json(tmp_path / "val.json", [
      {"image": "VizWiz_val_00000000.jpg", "question": "Ok. There is another picture.",
       "answerable": 0, "answer_type": "unanswerable",
       "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 9
                  + [{"answer": "cat food", "answer_confidence": "maybe"}]}])
  assert datasets.read_vizwiz(str(tmp_path), "val") == [Example(
      "VizWiz_val_00000000.jpg", (str(tmp_path / "val" / "VizWiz_val_00000000.jpg"),),
      question="Ok. There is another picture.",
      answers=("unanswerable",) * 9 + ("cat food",))]
  write_json(tmp_path / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What?"}])
  assert datasets.read_vizwiz(str(tmp_path), "test")[0].answers == ()


def test_hateful_memes(tmp_path):
  lines = [{"id": 42953, "img": "img/42953.png", "label": 0,
            "text": "its their character not their color that matters"},
           {"id": 23058, "img": "img/23058.png", "label": 1, "text": "a hateful text"}]
  (tmp_path / "dev_seen.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines) + "\n")
  assert datasets.read_hateful_memes(str(tmp_path), "dev_seen") == [
      Example("42953", (str(tmp_path / "img" / "42953.png"),),
              question="its their character not their color that matters", answers=("no",),
              label=0),
      Example("23058", (str(tmp_path / "img" / "23058.png"),), question="a hateful text",
              answers=("yes",), label=1)]
  (tmp_path / "test.jsonl").write_text(json.dumps({"id": 1, "img": "img/01.png", "text": "t"}))
  (example,) = datasets.read_hateful_memes(str(tmp_path), "test")
  assert (example.answers, example.label) == ((), None)


def imagenet_tree(tmp_path):
  (tmp_path / "LOC_synset_mapping.txt").write_text(
      "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
      "n01484850 great white shark, white shark, man-eater\n")
  for wnid, names in [("n01443537", ["ILSVRC2012_val_00000262.JPEG", "notes.txt"]),
                      ("n01440764", ["ILSVRC2012_val_00000293.JPEG",
                                     "ILSVRC2012_val_00002138.JPEG"])]:
    (tmp_path / "val" / wnid).mkdir(parents=True)
    for name in names:
      (tmp_path / "val" / wnid / name).write_bytes(b"")


def test_imagenet(tmp_path):
  imagenet_tree(tmp_path)
  assert datasets.imagenet_classes(str(tmp_path)) == (
      ("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"))
  val = tmp_path / "val"
  assert datasets.read_imagenet(str(tmp_path), "val") == [
      Example("ILSVRC2012_val_00000293",
              (str(val / "n01440764" / "ILSVRC2012_val_00000293.JPEG"),),
              answers=("tench",), label=0),
      Example("ILSVRC2012_val_00002138",
              (str(val / "n01440764" / "ILSVRC2012_val_00002138.JPEG"),),
              answers=("tench",), label=0),
      Example("ILSVRC2012_val_00000262",
              (str(val / "n01443537" / "ILSVRC2012_val_00000262.JPEG"),),
              answers=("goldfish",), label=1)]
  assert benchmarks.BENCHMARKS["imagenet"].classes(str(tmp_path)) == (
      "tench", "goldfish", "great white shark")


def test_imagenet_unknown_class_folder(tmp_path):
  imagenet_tree(tmp_path)
  (tmp_path / "val" / "n99999999").mkdir()
  with pytest.raises(ValueError, match="n99999999"):
    datasets.read_imagenet(str(tmp_path), "val")


def frames(tmp_path, video, count):
  folder = tmp_path / "frames" / video
  folder.mkdir(parents=True)
  for i in range(count):
    (folder / f"{i + 1}.jpg").write_bytes(b"")
  return tuple(str(folder / f"{i + 1}.jpg") for i in range(count))


def test_msvdqa(tmp_path):
  write_json(tmp_path / "test_qa.json", [
      {"answer": "dog", "id": 7, "question": "what is playing?", "video_id": 1},
      {"answer": "ball", "id": 8, "question": "what does the dog chase?", "video_id": 1}])
  clip = frames(tmp_path, "vid1", 11)  # 1.jpg ... 11.jpg, 10 and 11 after 9.
  assert datasets.read_msvdqa(str(tmp_path), "test") == [
      Example("7", clip, question="what is playing?", answers=("dog",)),
      Example("8", clip, question="what does the dog chase?", answers=("ball",))]


def test_msrvttqa(tmp_path):
  write_json(tmp_path / "val_qa.json", [
      {"answer": "man", "category_id": 3, "id": 0, "question": "who talks?", "video_id": 6513}])
  clip = frames(tmp_path, "video6513", 3)
  assert datasets.read_msrvttqa(str(tmp_path), "val") == [
      Example("0", clip, question="who talks?", answers=("man",))]


def test_video_qa_with_a_video_field_and_missing_frames(tmp_path):
  write_json(tmp_path / "test_qa.json", [
      {"answer": "cat", "id": 1, "question": "what is it?", "video": "video7010.mp4"},
      {"answer": "car", "id": 2, "question": "what is it?", "video": "video7011.mp4"}])
  frames(tmp_path, "video7010", 2)
  with pytest.raises(FileNotFoundError, match="video7011.*question 2"):
    datasets.read_msrvttqa(str(tmp_path), "test")
  frames(tmp_path, "video7011", 1)
  examples = datasets.read_msrvttqa(str(tmp_path), "test")
  assert [len(e.image_paths) for e in examples] == [2, 1]
  assert os.path.basename(os.path.dirname(examples[1].image_paths[0])) == "video7011"


# The registry.


def test_registry_covers_the_paper_benchmarks():
  assert set(benchmarks.BENCHMARKS) == {
      "coco", "flickr30k", "vqav2", "okvqa", "textvqa", "vizwiz", "hateful_memes", "imagenet",
      "msvdqa", "msrvttqa", "synthetic_caption", "synthetic_vqa", "synthetic_binding"}
  for name, benchmark in benchmarks.BENCHMARKS.items():
    assert benchmark.task in benchmarks.TASKS, name
    classification = benchmark.task == "classification"
    assert (benchmark.classes is not None) == classification, name
    assert (benchmark.prediction is not None) == classification, name
  assert benchmarks.BENCHMARKS["hateful_memes"].classes("unused") == ("no", "yes")


def test_classification_benchmarks_state_their_prediction():
  """Class log-likelihoods -> what the metric takes: ImageNet's best class, HatefulMemes' score
  of "yes" (its log-likelihood minus that of "no", for ROC-AUC)."""
  scores = np.array([-2.5, -0.5, -1.0])
  assert benchmarks.BENCHMARKS["imagenet"].prediction(scores) == 1
  assert benchmarks.BENCHMARKS["hateful_memes"].prediction(scores[:2]) == pytest.approx(2.0)


def test_registry_metrics():
  vqa = [Example("1", ("a.jpg",), "q", ("red",) * 2 + ("blue",) * 8),
         Example("2", ("b.jpg",), "q", ("blue",) * 10)]
  # 2 of 10 say "red" -> 0.6; "blue" unanimous -> 1.0; mean 0.8.
  assert benchmarks.BENCHMARKS["vqav2"].metric({"1": "Red", "2": "blue"}, vqa) == {
      "accuracy": pytest.approx(0.8)}
  memes = [Example(str(i), ("m.png",), "t", (), label) for i, label in enumerate([0, 1, 0, 1])]
  # Positive/negative pairs (0.3 > 0.1, 0.3 < 0.5, 0.9 > both): 3 of 4.
  assert benchmarks.BENCHMARKS["hateful_memes"].metric(
      {"0": 0.1, "1": 0.3, "2": 0.5, "3": 0.9}, memes) == {"ROC-AUC": pytest.approx(0.75)}
  images = [Example(str(i), ("i.jpg",), label=label) for i, label in enumerate([2, 0, 1])]
  assert benchmarks.BENCHMARKS["imagenet"].metric({"0": 2, "1": 1, "2": 1}, images) == {
      "top-1": pytest.approx(2 / 3)}
  clips = [Example("7", ("f.jpg",), "q", ("dog",)), Example("8", ("f.jpg",), "q", ("2",))]
  assert benchmarks.BENCHMARKS["msvdqa"].metric({"7": "the dog", "8": "three"}, clips) == {
      "accuracy": 0.5}
  captions = [Example("1", ("a.jpg",), answers=("a cat on a mat",)),
              Example("2", ("b.jpg",), answers=("a dog in a park",))]
  scores = benchmarks.BENCHMARKS["coco"].metric(
      {"1": "A cat on a mat.", "2": "A dog in a park."}, captions)
  assert scores["BLEU-4"] == pytest.approx(1.0)


def test_registry_metrics_reject_missing_predictions_and_labels():
  vqa = [Example("1", ("a.jpg",), "q", ("red",) * 10), Example("2", ("b.jpg",), "q", ("red",))]
  with pytest.raises(ValueError, match=r"1 of 2 examples have no prediction, e.g. ids \['2'\]"):
    benchmarks.BENCHMARKS["vqav2"].metric({"1": "red"}, vqa)
  unlabelled = [Example("1", ("a.jpg",), "q")]
  with pytest.raises(ValueError, match="without answers"):
    benchmarks.BENCHMARKS["vqav2"].metric({"1": "red"}, unlabelled)
  with pytest.raises(ValueError, match="without label"):
    benchmarks.BENCHMARKS["imagenet"].metric({"1": 0}, unlabelled)
