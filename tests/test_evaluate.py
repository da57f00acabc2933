"""Every benchmark end to end on tiny files in its official format, with real images, through
the harness and the CLI (tiny model, random weights: the numbers are not the point; that every
query is read, prompted, decoded and scored is)."""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import flamingo_jax
from flamingo_jax.data import media
from flamingo_jax.data.tokenizer import decode_text, make_vocabulary
from flamingo_jax.decode import candidate_log_likelihoods, encode, generate, right_pad
from flamingo_jax.evaluation import harness, prompts, rices
from flamingo_jax.evaluation import synthetic as synthetic_benchmarks
from flamingo_jax.evaluation.benchmarks import BENCHMARKS

from conftest import REPO, user_environment
from multihost import run_processes

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (90, 90, 90),
           (250, 250, 250)]
SETTINGS = harness.Settings(batch_size=2, max_new_tokens=4, beam_size=2, num_frames=2)


def image(path, i):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (40 + 8 * i, 36), COLOURS[i % len(COLOURS)]).save(path)


def write_json(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(content))


def karpathy(root, file_name, folder):
  entries = []
  for i, split in enumerate(["train", "train", "train", "test", "test", "test"]):
    entry = {"filename": f"{i}.jpg", "split": split, "cocoid": i, "imgid": i,
             "sentences": [{"raw": f"a photo number {i}", "tokens": []},
                           {"raw": "a plain colour", "tokens": []}]}
    if folder == "coco":
      entry["filepath"] = "val2014"
    image(root / ("val2014" if folder == "coco" else "flickr30k-images") / f"{i}.jpg", i)
    entries.append(entry)
  write_json(root / file_name, {"images": entries})


def vqa(root, questions, annotations, split):
  """Three questions on three images of a split, ten answers each."""
  offset = 0 if split.startswith("train") else 10
  qs, anns = [], []
  for i in range(3):
    image_id = offset + i
    image(root / split / f"COCO_{split}_{image_id:012d}.jpg", i)
    qs.append({"image_id": image_id, "question": f"What colour is {i}?",
               "question_id": 100 * image_id})
    anns.append({"question_id": 100 * image_id, "image_id": image_id,
                 "answers": [{"answer": ["red", "green", "blue"][i]}] * 10})
  write_json(root / questions.format(split=split), {"questions": qs})
  write_json(root / annotations.format(split=split), {"annotations": anns})


def write_benchmark(name, root):
  if name == "coco":
    karpathy(root, "dataset_coco.json", "coco")
  elif name == "flickr30k":
    karpathy(root, "dataset_flickr30k.json", "flickr30k")
  elif name in ("vqav2", "okvqa"):
    prefix = "v2_" if name == "vqav2" else ""
    for split in ("train2014", "val2014"):
      vqa(root, prefix + "OpenEnded_mscoco_{split}_questions.json",
          prefix + "mscoco_{split}_annotations.json", split)
  elif name == "textvqa":
    for split in ("train", "val"):
      data = []
      for i in range(3):
        image(root / "train_images" / f"{split}{i}.jpg", i)
        data.append({"question": f"what is written {i}?", "image_id": f"{split}{i}",
                     "question_id": 10 * i + (split == "val"), "answers": [f"word{i}"] * 10})
      write_json(root / f"TextVQA_0.5.1_{split}.json", {"data": data})
  elif name == "vizwiz":
    for split in ("train", "val"):
      items = []
      for i in range(3):
        image(root / split / f"VizWiz_{split}_{i:08d}.jpg", i)
        items.append({"image": f"VizWiz_{split}_{i:08d}.jpg", "question": "What is this?",
                      "answers": [{"answer": f"thing {i}"}] * 10})
      write_json(root / f"{split}.json", items)
  elif name == "hateful_memes":
    for split in ("train", "test_seen"):
      lines = []
      for i in range(4):
        image(root / "img" / f"{split}{i}.png", i)
        lines.append(json.dumps({"id": f"{split}{i}", "img": f"img/{split}{i}.png",
                                 "label": i % 2, "text": f"meme text {i}"}))
      (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
  elif name == "imagenet":
    (root / "LOC_synset_mapping.txt").write_text(
        "n01 red thing\nn02 green thing, verdant\nn03 blue thing\n")
    for split in ("train", "val"):
      for c, wnid in enumerate(["n01", "n02", "n03"]):
        image(root / split / wnid / f"{split}_{c}.JPEG", c)
  elif name in ("msvdqa", "msrvttqa"):
    folder = "vid{}" if name == "msvdqa" else "video{}"
    for split, ids in (("train", [1, 2]), ("test", [3, 4])):
      write_json(root / f"{split}_qa.json", [
          {"answer": f"thing{v}", "id": v, "question": "what is shown?", "video_id": v}
          for v in ids])
      for v in ids:
        for f in range(3):
          image(root / "frames" / folder.format(v) / f"{f + 1}.jpg", v + f)
  else:
    raise AssertionError(f"no test files for {name}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """{benchmark: its data_dir}, every benchmark of the registry."""
  root = tmp_path_factory.mktemp("benchmarks")
  dirs = {name: pathlib.Path(d) for name, d in synthetic_benchmarks.write_benchmarks(
      str(root / "synthetic"), image_size=32, num_queries=3, num_support=4, max_shots=2).items()}
  for name in BENCHMARKS.keys() - dirs.keys():
    dirs[name] = root / name
    dirs[name].mkdir()
    write_benchmark(name, dirs[name])
  return dirs


@pytest.fixture(scope="module")
def setup(tiny_config, tiny_model):
  from test_flamingo import open_gates
  model, params = tiny_model
  return model, open_gates(params), make_vocabulary(tiny_config.data.vocabulary)


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_runs_end_to_end(name, data, setup, tiny_config):
  model, params, vocabulary = setup
  benchmark = BENCHMARKS[name]
  queries = benchmark.read(str(data[name]), benchmark.eval_split)
  for shots in (0, 1):
    result = harness.evaluate(model, params, tiny_config, vocabulary, name, str(data[name]),
                              shots, SETTINGS)
    assert set(result["predictions"]) == {q.id for q in queries}
    assert result["metrics"] == benchmark.metric(result["predictions"], queries)
    for value in result["metrics"].values():
      assert np.isfinite(value) and value >= 0


def test_batched_predictions_equal_one_query_at_a_time(data, setup, tiny_config):
  """Batching, left padding, support selection and media assembly change nothing: greedy VQA
  answers equal `generate` on each query's own unpadded prompt and images."""
  model, params, vocabulary = setup
  settings = harness.Settings(batch_size=2, max_new_tokens=4, beam_size=1, seed=3)
  result = harness.evaluate(model, params, tiny_config, vocabulary, "vqav2",
                            str(data["vqav2"]), 2, settings)
  benchmark = BENCHMARKS["vqav2"]
  queries = benchmark.read(str(data["vqav2"]), benchmark.eval_split)
  support = benchmark.read(str(data["vqav2"]), benchmark.support_split)
  chosen = harness.select_support(settings, 2, queries, support, None,
                                  np.random.default_rng(settings.seed))
  loader = media.MediaLoader(tiny_config.model)
  format_ = prompts.FORMATS["open_flamingo"]["vqa"]
  stop = tiny_config.model.eoc_token_id
  for query, indices in zip(queries, chosen):
    shown = [support[i] for i in indices]
    tokens = prompts.prompt_tokens(format_, [(s.question, s.answers[0]) for s in shown],
                                   query.question, vocabulary)
    images = np.stack([loader.images(e.image_paths) for e in shown + [query]])[None]
    new = generate(model, params, encode(model, params, jnp.asarray(images)),
                   jnp.asarray(tokens[None]), 4, stop_token=stop)[0]
    answer = prompts.postprocess(decode_text(np.asarray(new), vocabulary, stop), "vqa")
    assert result["predictions"][query.id] == answer


def test_prompts_read_back_as_the_formats_say(tiny_config):
  vocabulary = make_vocabulary(tiny_config.data.vocabulary)
  ids = tiny_config.model
  tokens = prompts.prompt_tokens(prompts.FORMATS["open_flamingo"]["vqa"],
                                 [("Is it red?", "yes")], "Is it blue?", vocabulary)
  media, eoc = ids.media_token_id, ids.eoc_token_id
  text = "".join("<image>" if t == media else "<EOC>" if t == eoc else vocabulary.decode([t])
                 for t in tokens.tolist())
  assert text == ("<image>Question:Is it red? Short answer:yes<EOC>"
                  "<image>Question:Is it blue? Short answer:")
  zero_shot = prompts.prompt_tokens(prompts.FORMATS["paper"]["caption"],
                                    [(None, "a cat"), (None, "a dog")], None, vocabulary,
                                    text_only_support=True)
  assert (zero_shot == media).sum() == 1 and (zero_shot == eoc).sum() == 2
  assert vocabulary.decode([t for t in zero_shot.tolist() if t < media]) == (
      "Output: a catOutput: a dogOutput:")
  assert prompts.postprocess(" blue. Question: what", "vqa") == "blue"
  assert prompts.postprocess(" a red square\nOutput: x", "caption") == "a red square"


def test_imagenet_predicts_the_class_with_the_highest_likelihood(data, setup, tiny_config):
  model, params, vocabulary = setup
  settings = harness.Settings(batch_size=2, seed=5, candidate_chunk=2)  # Chunks: 2 + 1 names.
  result = harness.evaluate(model, params, tiny_config, vocabulary, "imagenet",
                            str(data["imagenet"]), 0, settings)
  benchmark = BENCHMARKS["imagenet"]
  queries = benchmark.read(str(data["imagenet"]), benchmark.eval_split)
  support = benchmark.read(str(data["imagenet"]), benchmark.support_split)
  classes = benchmark.classes(str(data["imagenet"]))
  chosen = harness.select_support(settings, 0, queries, support, None,
                                  np.random.default_rng(settings.seed))
  loader = media.MediaLoader(tiny_config.model)
  format_ = prompts.FORMATS["open_flamingo"]["classification"]
  candidates, mask = right_pad([prompts.answer_tokens(format_, c, vocabulary) for c in classes])
  for query, indices in zip(queries, chosen):
    tokens = prompts.prompt_tokens(format_, [(None, classes[support[i].label]) for i in indices],
                                   None, vocabulary, text_only_support=True)
    images = loader.images(query.image_paths)[None, None]
    scores = candidate_log_likelihoods(model, params, encode(model, params, jnp.asarray(images)),
                                       jnp.asarray(tokens[None]), candidates, mask)
    assert result["predictions"][query.id] == int(np.argmax(scores[0]))


def test_media_are_the_tower_s_size_and_clips_spread_over_the_video(tmp_path, tiny_config):
  paths = []
  for i in range(5):
    paths.append(str(tmp_path / f"{i}.jpg"))
    image(pathlib.Path(paths[-1]), i)
  loader = media.MediaLoader(tiny_config.model)
  size = tiny_config.model.vision.image_size
  assert loader.images(paths[:1]).shape == (1, size, size, 3)
  np.testing.assert_array_equal(loader.clip(paths, 3), loader.images(paths[::2]))


def test_the_paper_style_ensembles_close_ended_scores_over_the_orders_of_the_shots(
    data, setup, tiny_config):
  # HatefulMemes' prediction is log p(yes) - log p(no), so the ensemble's mean over the 3! = 6
  # orders of 3 shots shows in it, not only in an argmax.
  model, params, vocabulary = setup
  settings = harness.Settings.for_style("paper", batch_size=2, seed=5)
  assert settings.permutations == 6 and harness.Settings().permutations == 1
  name, shots = "hateful_memes", 3
  result = harness.evaluate(model, params, tiny_config, vocabulary, name, str(data[name]),
                            shots, settings)
  benchmark = BENCHMARKS[name]
  queries = benchmark.read(str(data[name]), benchmark.eval_split)
  support = benchmark.read(str(data[name]), benchmark.support_split)
  classes = benchmark.classes(str(data[name]))
  chosen = harness.select_support(settings, shots, queries, support, None,
                                  np.random.default_rng(settings.seed))
  format_ = prompts.FORMATS["paper"].get(name, prompts.FORMATS["paper"]["classification"])
  candidates, mask = right_pad([prompts.answer_tokens(format_, c, vocabulary) for c in classes])
  loader = media.MediaLoader(tiny_config.model)
  spreads = []
  for query, indices in zip(queries, chosen):
    by_order = []
    for order in itertools.permutations(indices):
      shown = [support[i] for i in order]
      tokens = prompts.prompt_tokens(format_, [(s.question, classes[s.label]) for s in shown],
                                     query.question, vocabulary)
      images = np.stack([loader.images(e.image_paths) for e in shown + [query]])[None]
      scores = candidate_log_likelihoods(model, params, encode(model, params, jnp.asarray(images)),
                                         jnp.asarray(tokens[None]), candidates, mask)[0]
      by_order.append(float(scores[1] - scores[0]))
    assert result["predictions"][query.id] == pytest.approx(np.mean(by_order), abs=1e-4)
    spreads.append(max(by_order) - min(by_order))
  assert max(spreads) > 1e-3  # The orders disagree: the mean is none of them.


def test_shot_orders_are_distinct_and_start_with_the_chosen_one():
  rng = np.random.default_rng(0)
  orders = harness.shot_orders(4, 6, rng)
  assert orders[0] == (0, 1, 2, 3) and len(set(orders)) == 6
  assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
  assert harness.shot_orders(2, 6, rng) == [(0, 1), (1, 0)]
  assert harness.shot_orders(4, 1, rng) == [(0, 1, 2, 3)]


def test_paper_clips_are_30_frames_at_3_fps_from_the_centre(tmp_path, tiny_config):
  # Frames extracted at 10 FPS. A 20 s video: the 10 s clip starts at 5 s, frame k at
  # 5 + k / 3 s, i.e. frame floor(50 + 10 k / 3). A 2 s video: the clip starts at 0 and its
  # samples past the end repeat the last frame.
  paths = []
  for i in range(200):  # Frame i is flat (i, 255 - i, 0): every frame differs.
    paths.append(str(tmp_path / f"{i}.png"))
    Image.new("RGB", (40, 36), (i, 255 - i, 0)).save(paths[-1])
  loader = media.MediaLoader(tiny_config.model)
  clip = loader.clip_at_rate(paths, 10.0, fps=3.0, num_frames=30)
  expected = [int(np.floor(50 + 10 * k / 3 + 1e-6)) for k in range(30)]
  assert expected[:4] == [50, 53, 56, 60] and expected[-1] == 146
  np.testing.assert_array_equal(clip, loader.images([paths[i] for i in expected]))
  short = loader.clip_at_rate(paths[:20], 10.0, fps=3.0, num_frames=30)
  expected = [min(19, int(np.floor(10 * k / 3 + 1e-6))) for k in range(30)]
  np.testing.assert_array_equal(short, loader.images([paths[i] for i in expected]))


def test_the_paper_style_shows_video_models_30_frames(data, setup, tiny_config, monkeypatch):
  model, params, vocabulary = setup
  shapes = []
  real = harness.encode

  def recording(model, params, images):
    shapes.append(images.shape)
    return real(model, params, images)

  monkeypatch.setattr(harness, "encode", recording)
  settings = harness.Settings.for_style("paper", batch_size=2, max_new_tokens=2, beam_size=1)
  result = harness.evaluate(model, params, tiny_config, vocabulary, "msvdqa",
                            str(data["msvdqa"]), 1, settings)
  assert len(result["predictions"]) == 2
  size = tiny_config.model.vision.image_size
  # Each clip encoded once, on its own: [clips, 1, frames, S, S, 3], two clips a call.
  assert shapes and set(shapes) == {(2, 1, 30, size, size, 3)}


def test_rices_puts_the_most_similar_support_image_next_to_the_query():
  query = np.array([[1.0, 0.0]])
  support = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
  np.testing.assert_array_equal(rices.rices(query, support, 2), [[2, 1]])


def cli(checkpoint, data_dir, output, *flags):
  return [sys.executable, "-m", "flamingo_jax.evaluate", f"--checkpoint={checkpoint}",
          "--benchmark=okvqa", f"--data_dir={data_dir}", "--shots=0,2", "--batch_size=2",
          "--beam_size=1", "--selection=rices", f"--output={output}", *flags]


@pytest.mark.slow
def test_cli_writes_a_table_and_json_on_one_device_and_on_an_fsdp_by_tensor_mesh(
    tmp_path, data, tiny_config, tiny_model):
  """The CLI on this machine's 8 CPU devices: the tiny config's mesh, and --mesh=1,4,2 (the
  parameters split 4 x 2) give the same predictions; two trials give a mean and a spread."""
  flamingo_jax.save(tmp_path / "ckpt", tiny_model[1], tiny_config)
  outputs = {}
  for mesh in ["1,1,1", "1,4,2"]:
    # One device as a user's shell has it, or the 8 this session's XLA_FLAGS give.
    env = user_environment() if mesh == "1,1,1" else dict(os.environ, JAX_PLATFORMS="cpu")
    output = tmp_path / f"okvqa_{mesh}.json"
    run = subprocess.run(cli(tmp_path / "ckpt", data["okvqa"], output, f"--mesh={mesh}",
                             "--trials=2"),
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| okvqa shots | accuracy |" in run.stdout and " ± " in run.stdout
    assert not output.with_suffix(".partial.jsonl").exists()
    outputs[mesh] = json.loads(output.read_text())["results"]
  assert set(outputs["1,4,2"]) == {"0", "2"}
  trials = outputs["1,4,2"]["2"]["trials"]
  assert [t["seed"] for t in trials] == [0, 1] and len(trials[0]["predictions"]) == 3
  assert outputs["1,4,2"]["2"]["metrics"]["accuracy"] == pytest.approx(
      np.mean([t["metrics"]["accuracy"] for t in trials]))
  assert outputs["1,4,2"] == outputs["1,1,1"]


@pytest.mark.slow
def test_cli_resumes_from_the_predictions_of_a_stopped_run(tmp_path, data, tiny_config,
                                                           tiny_model):
  """A run stopped after its first batch: started again, it takes that batch's predictions
  from the partial file (marked here, to show they were not recomputed) and computes the
  rest, which equal an uninterrupted run's."""
  flamingo_jax.save(tmp_path / "ckpt", tiny_model[1], tiny_config)
  whole = tmp_path / "whole.json"
  run = subprocess.run(cli(tmp_path / "ckpt", data["okvqa"], whole, "--shots=2"), cwd=REPO,
                       env=user_environment(), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  whole = json.loads(whole.read_text())
  expected = whole["results"]["2"]["trials"][0]["predictions"]
  first_batch = list(expected)[:2]
  output = tmp_path / "resumed.json"
  run_line = {k: whole[k] for k in ("benchmark", "checkpoint", "data_dir", "settings")}
  records = [{"shots": 2, "seed": 0, "id": key, "prediction": "resumed " + expected[key]}
             for key in first_batch]
  output.with_suffix(".partial.jsonl").write_text(
      "".join(json.dumps(line) + "\n" for line in [run_line, *records]) + '{"shots": 2, "se')
  run = subprocess.run(cli(tmp_path / "ckpt", data["okvqa"], output, "--shots=2"), cwd=REPO,
                       env=user_environment(), capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  resumed = json.loads(output.read_text())["results"]["2"]["trials"][0]["predictions"]
  assert resumed == {k: ("resumed " + v if k in first_batch else v) for k, v in expected.items()}


@pytest.mark.slow
def test_two_processes_evaluate_as_one(tmp_path, data, tiny_config, tiny_model):
  """2 processes x 2 CPU devices (JAX's multi-controller runtime on a loopback coordinator)
  give the metrics and predictions of 1 process x 4 devices: each batch's queries split over
  data x fsdp across the hosts, RICES features and predictions gathered, host 0 writing."""
  flamingo_jax.save(tmp_path / "ckpt", tiny_model[1], tiny_config)
  outputs = {}
  for processes in (1, 2):
    output = tmp_path / f"okvqa_{processes}.json"
    results = run_processes(cli(tmp_path / "ckpt", data["okvqa"], output, "--mesh=2,2,1",
                                "--batch_size=4", "--shots=2"),
                            num_processes=processes, devices_per_process=4 // processes,
                            timeout=600)
    assert "| okvqa shots | accuracy |" in results[0].stdout
    assert "okvqa shots" not in "".join(r.stdout for r in results[1:])
    outputs[processes] = json.loads(output.read_text())["results"]
  assert len(outputs[2]["2"]["trials"][0]["predictions"]) == 3
  assert outputs[2] == outputs[1]
