"""An evaluation run's mechanics on tiny benchmark files: each medium encoded once a run (the
same predictions and scores as encoding every prompt's media anew), RICES features kept on
disk, and a run interrupted after a batch resuming to the uninterrupted run's predictions."""

import json

import jax
import numpy as np
import pytest

from flamingo_jax.data.tokenizer import make_vocabulary
from flamingo_jax.decode import encode
from flamingo_jax.evaluation import harness, rices

from test_evaluate import write_benchmark

SETTINGS = harness.Settings(batch_size=2, max_new_tokens=3, beam_size=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("benchmarks")
  for name in ("coco", "hateful_memes", "okvqa"):
    write_benchmark(name, root / name)
  # One support answer 30 bytes longer than the others: prompts that show it and prompts that
  # do not differ by more than a length bucket.
  path = root / "okvqa" / "mscoco_train2014_annotations.json"
  annotations = json.loads(path.read_text())
  annotations["annotations"][0]["answers"] = [{"answer": "red" + " and more" * 3}] * 10
  path.write_text(json.dumps(annotations))
  return root


@pytest.fixture(scope="module")
def setup(tiny_config, tiny_model):
  from test_flamingo import open_gates
  model, params = tiny_model
  return model, open_gates(params), make_vocabulary(tiny_config.data.vocabulary)


def counting_encode(monkeypatch) -> list:
  """Records the media of every encode call the harness makes."""
  calls, real = [], harness.encode

  def recording(model, params, images):
    calls.append(images.shape[0] * images.shape[1])
    return real(model, params, images)
  monkeypatch.setattr(harness, "encode", recording)
  return calls


@pytest.mark.parametrize("name", ["coco", "hateful_memes"])
def test_each_medium_is_encoded_once_and_nothing_changes(name, data, setup, tiny_config,
                                                         monkeypatch):
  model, params, vocabulary = setup
  calls = counting_encode(monkeypatch)
  runs = {}
  for gib in (4.0, 0.0):  # Kept between batches, or encoded anew for every batch.
    settings = harness.Settings(**{**SETTINGS.__dict__, "media_cache_gib": gib})
    evaluation = harness.Evaluation(model, params, tiny_config, vocabulary, name,
                                    str(data / name), settings)
    runs[gib] = [evaluation.run(shots, seed=1) for shots in (2, 1)]
    runs[gib, "encoded"] = evaluation.media.encoded
  # 3 (coco) or 4 (memes) queries and as many support images: with the cache, at most every
  # image once over both runs; without, each batch's own again.
  images = 6 if name == "coco" else 8
  assert runs[4.0, "encoded"] <= images < runs[0.0, "encoded"]
  for cached, fresh in zip(runs[4.0], runs[0.0]):
    assert cached["predictions"].keys() == fresh["predictions"].keys()
    for key, prediction in cached["predictions"].items():
      if isinstance(prediction, float):  # HatefulMemes: the score of "yes".
        np.testing.assert_allclose(prediction, fresh["predictions"][key], rtol=1e-5, atol=1e-5)
      else:
        assert prediction == fresh["predictions"][key]


def test_cached_visual_tokens_are_what_encoding_the_prompt_gives(data, setup, tiny_config):
  model, params, vocabulary = setup
  evaluation = harness.Evaluation(model, params, tiny_config, vocabulary, "coco",
                                  str(data / "coco"), SETTINGS)

  def visual(rows):
    by_key = {tuple(e.image_paths): e for row in rows for e in row}
    return evaluation.media.tokens(
        [[tuple(e.image_paths) for e in row] for row in rows],
        lambda missing: evaluation.encode_media([by_key[k] for k in missing]))
  support, queries = evaluation.support, evaluation.queries
  visual([support[:2]])  # Kept; the rows below mix kept and new media, in other orders.
  rows = [support[:2] + [queries[0]], [support[1], queries[1], support[0]]]
  images = np.stack([np.stack([evaluation.load(e) for e in row]) for row in rows])
  np.testing.assert_allclose(visual(rows), encode(model, params, images), rtol=1e-5, atol=1e-6)
  assert evaluation.media.encoded == 4


def test_rices_features_are_kept_on_disk_for_the_same_tower(tmp_path, data, setup, tiny_config,
                                                            monkeypatch):
  model, params, vocabulary = setup
  settings = harness.Settings(**{**SETTINGS.__dict__, "selection": "rices",
                                 "features_dir": str(tmp_path)})
  computed = []
  real = rices.pooled_features
  monkeypatch.setattr(rices, "pooled_features",
                      lambda *args: computed.append(1) or real(*args))
  first = harness.Evaluation(model, params, tiny_config, vocabulary, "coco", str(data / "coco"),
                             settings).run(2, seed=0)
  support_and_queries = len(computed)
  again = harness.Evaluation(model, params, tiny_config, vocabulary, "coco", str(data / "coco"),
                             settings).run(2, seed=0)
  assert (tmp_path / "coco_train.npz").exists()
  assert len(computed) < 2 * support_and_queries  # The support's features were read back.
  assert again["predictions"] == first["predictions"]
  # Another tower's features are not taken for this one's.
  other = dict(params, vision_encoder=jax.tree.map(lambda x: 2 * x, params["vision_encoder"]))
  assert rices.tower_fingerprint(other) != rices.tower_fingerprint(params)


def test_one_shape_serves_a_run(data, setup, tiny_config, monkeypatch):
  """Prompts of different lengths, and a short last batch: every batch the same shape, so the
  decoder compiles once a run."""
  model, params, vocabulary = setup
  shapes, real = [], harness.generation.generate_answers

  def recording(model, params, visual, tokens, positions, **kwargs):
    shapes.append((visual.shape, tokens.shape))
    return real(model, params, visual, tokens, positions, **kwargs)
  monkeypatch.setattr(harness.generation, "generate_answers", recording)
  evaluation = harness.Evaluation(model, params, tiny_config, vocabulary, "okvqa",
                                  str(data / "okvqa"), SETTINGS)
  run = evaluation.run(2, seed=4)  # The first batch's prompts do not show the long answer.
  support = {e.id: e for e in evaluation.support}
  lengths = {len(evaluation.prompt(q, [support[i] for i in run["support"][q.id]], False))
             for q in evaluation.queries}
  assert max(lengths) - min(lengths) > 16  # Batches of their own would have had two shapes.
  assert len(run["predictions"]) == 3 and len(shapes) == 2 and len(set(shapes)) == 1
  assert shapes[0][1] == (2, harness.bucket(max(lengths)))


def test_an_interrupted_run_resumes_to_the_same_predictions(data, setup, tiny_config):
  model, params, vocabulary = setup
  evaluation = harness.Evaluation(model, params, tiny_config, vocabulary, "coco",
                                  str(data / "coco"), SETTINGS)
  whole = evaluation.run(2, seed=4)

  class Stop(Exception):
    pass

  written = {}

  def write_then_stop(predictions):
    written.update(predictions)
    raise Stop()
  with pytest.raises(Stop):  # Stopped after its first batch's predictions were written.
    harness.Evaluation(model, params, tiny_config, vocabulary, "coco", str(data / "coco"),
                       SETTINGS).run(2, seed=4, on_batch=write_then_stop)
  assert len(written) == SETTINGS.batch_size
  batches = []
  resumed = harness.Evaluation(model, params, tiny_config, vocabulary, "coco",
                               str(data / "coco"), SETTINGS).run(
                                   2, seed=4, done=dict(written), on_batch=batches.append)
  assert [set(b) for b in batches] == [set(whole["predictions"]) - set(written)]
  assert resumed == whole
