"""The few-shot first token (media encoded, prompt read, first token chosen), flamingo-jax against
OpenFlamingo, timed in alternation.

compare_openflamingo.py times the two sides in turn, minutes apart. On a shared machine whose
speed drifts (on 2026-12-06 OpenFlamingo's first token took 2.65 to 4.42 s within four minutes
here), that compares two moments as much as two programs. This script takes the model and the
prompts that compare_openflamingo.py saved in its work folder (the default configuration),
loads each side in a process of its own on the same CPUs, and asks them for one first token at
a time, in turn (each pair in the other order than the last, after a pause that lets the other
side's threads settle): each pair's ratio compares the two sides within seconds. It prints
every pair and the medians. flamingo-jax's side also times its encoding compiled with XLA's
default options (`decode.encode` leaves out XLA:CPU's YNNPACK dots: docs/design.md,
"Decoding"), to see whether that still pays.

  python benchmarks/compare_openflamingo.py --shots=32 --eval_queries=0 --scaling_images= \
      --scaling_lengths= --workdir=DIR
  python benchmarks/first_token.py --workdir=DIR --shots=32

Each side's first token is timed as compare_openflamingo.py times it: OpenFlamingo's media
encoded and prompt read by its forward pass (`OpenFlamingoSide.start`), flamingo-jax's
`decode.encode` then `decode.generate.prefill`, each in the work folder's precision.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

import measure

HERE = pathlib.Path(__file__).resolve().parent


def torch_timer(directory: pathlib.Path, spec: dict, shots: int):
  """A function that times one OpenFlamingo first token on the saved model."""
  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import compare_openflamingo as theirs  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(spec["threads"])
  with tempfile.TemporaryDirectory() as scratch:
    model, _ = theirs.open_flamingo_model(theirs.DEFAULT, pathlib.Path(scratch))
  saved = safetensors.torch.load_file(directory / theirs.CHECKPOINT)
  missing, unexpected = model.load_state_dict(saved, strict=False)
  if unexpected or any(not k.startswith(theirs.ALIASES) for k in missing):
    raise ValueError(f"{directory} holds another model: missing {missing}, unexpected "
                     f"{unexpected}.")
  side = theirs.OpenFlamingoSide(model, spec["vocab_size"], spec["dtype"], "cpu")
  inputs = np.load(directory / "inputs.npz")
  images = side.vision_x(inputs[f"prompt_images_{shots}"])
  prompt = side.ids(inputs[f"prompt_tokens_{shots}"])

  @torch.no_grad()
  def first_token() -> dict:
    start = time.perf_counter()
    logits, _ = side.start(images, prompt)
    logits.argmax(-1)
    seconds = time.perf_counter() - start
    side.finish()
    return dict(seconds=seconds)

  return first_token


def jax_timer(directory: pathlib.Path, spec: dict, shots: int):
  """A function that times one flamingo-jax first token on the imported model, its two
  programs, and the encoding compiled with XLA's default options."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import compare_openflamingo_jax as ours  # pylint: disable=g-import-not-at-top
  from flamingo_jax.decode.generate import (  # pylint: disable=g-import-not-at-top
      encode, prefill, visual_tokens)
  side = ours.Side(directory, spec)
  inputs = np.load(directory / "inputs.npz")
  images = jnp.asarray(inputs[f"prompt_images_{shots}"][:, :, None])
  tokens = side.ours(inputs[f"prompt_tokens_{shots}"])
  read = jax.jit(lambda params, visual: jnp.argmax(
      prefill(side.model, params, visual, tokens, None, spec["new_tokens"] - 1)[0], -1))
  default = jax.jit(lambda params, x: visual_tokens(side.model, params, x))

  def first_token() -> dict:
    start = time.perf_counter()
    visual = jax.block_until_ready(encode(side.model, side.params, images))
    middle = time.perf_counter()
    jax.block_until_ready(read(side.params, visual))
    end = time.perf_counter()
    jax.block_until_ready(default(side.params, images))
    return dict(seconds=end - start, encode=middle - start, prompt=end - middle,
                encode_default_options=time.perf_counter() - end)

  return first_token


def serve(timer) -> None:
  """Answers each line on stdin with one timing (a JSON line), after a warm-up."""
  timer()
  print("ready", flush=True)
  for _ in sys.stdin:
    print(json.dumps(timer()), flush=True)


def start_side(side: str, args) -> subprocess.Popen:
  """A process serving `side`'s timings, its log in the work folder; returns once it is
  warm."""
  log = open(args.workdir / f"first_token_{side}.log", "w")  # pylint: disable=consider-using-with
  worker = subprocess.Popen(
      [sys.executable, __file__, f"--side={side}", f"--workdir={args.workdir}",
       f"--shots={args.shots}"],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=HERE)
  for line in worker.stdout:
    if line.strip() == "ready":
      return worker
  raise RuntimeError(f"The {side} side exited before it was ready: see {log.name}.")


def ask(worker: subprocess.Popen) -> dict:
  worker.stdin.write("go\n")
  worker.stdin.flush()
  return json.loads(worker.stdout.readline())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, type=pathlib.Path,
                      help="compare_openflamingo.py's --workdir, after a run of it.")
  parser.add_argument("--shots", type=int, default=32, help="A shot count that run timed.")
  parser.add_argument("--pairs", type=int, default=10, help="First tokens timed on each side.")
  parser.add_argument("--pause", type=float, default=1.0,
                      help="Seconds between two timings, for the last one's threads to settle.")
  parser.add_argument("--side", choices=["torch", "jax"], help=argparse.SUPPRESS)
  args = parser.parse_args()
  spec = json.loads((args.workdir / "spec.json").read_text())
  measure.pin_cpus(spec["threads"])
  if args.side:
    serve((torch_timer if args.side == "torch" else jax_timer)(args.workdir, spec, args.shots))
    return
  workers = {side: start_side(side, args) for side in ("torch", "jax")}
  print(f"{args.shots}-shot first token, {spec['dtype']}, {spec['threads']} CPUs "
        f"({time.strftime('%Y-%m-%d %H:%M')}):\n")
  print("| pair | OpenFlamingo s | flamingo-jax s | of which encoding | reading the prompt "
        "| ratio | encoding with XLA's default options |\n"
        "| --- | --- | --- | --- | --- | --- | --- |")
  rows = []
  for pair in range(args.pairs):
    timed = {}
    for side in ("torch", "jax") if pair % 2 == 0 else ("jax", "torch"):
      time.sleep(args.pause)
      timed[side] = ask(workers[side])
    theirs, ours = timed["torch"], timed["jax"]
    rows.append(dict(theirs=theirs["seconds"], ratio=theirs["seconds"] / ours["seconds"], **ours))
    print(f"| {pair + 1} | {theirs['seconds']:.3f} | {ours['seconds']:.3f} | "
          f"{ours['encode']:.3f} | {ours['prompt']:.3f} | {rows[-1]['ratio']:.3f} | "
          f"{ours['encode_default_options']:.3f} |", flush=True)
  for worker in workers.values():
    worker.stdin.close()
    worker.wait(timeout=60)
  median = lambda key: measure.median([row[key] for row in rows])
  print(f"| median | {median('theirs'):.3f} | {median('seconds'):.3f} | {median('encode'):.3f} "
        f"| {median('prompt'):.3f} | {median('ratio'):.3f} | "
        f"{median('encode_default_options'):.3f} |")
  print("\n(ratio: OpenFlamingo's time / flamingo-jax's, of a pair; each pair's two timings "
        "are seconds apart, in alternating order)")


if __name__ == "__main__":
  main()
