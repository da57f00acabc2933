"""Beam search's serving programs compiled for a TPU slice on this machine (libtpu, no TPU
needed), and what each needs of a chip (train/serve_aot.py is the command line): `encode` (a
batch of prompts' images to visual tokens), `prefill` (every gated block's keys and values of
the media, and the prompts read into a cache with room for the new tokens; with beams, the
state copied to every beam) and one cached decoding step (a token for every beam, after its
caches are reordered to the hypotheses it continues).

Nothing is allocated: the parameters are abstract, placed on the mesh as
`flamingo_jax.load(dir, config, mesh=, frozen_dtype=)` places them; the prompts and the decoding
state are split over the mesh axes of `batch` (the caches' heads over those of `heads`), and the
programs trace under the config's logical-axis rules, as training's.
"""

import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flamingo_jax import sharding
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.decode.generate import extend, prefill, visual_tokens
from flamingo_jax.flamingo import factory
from flamingo_jax.train import flops as flops_lib
from flamingo_jax.train import pod


def prefill_beams(model, params, visual, tokens, positions, room: int, beams: int):
  """visual [B, M, R, D]; tokens, positions [B, L] -> (logits [N, V], the decode state, next
  positions [N]) for N = B * beams rows, prompt-major, as beam search starts."""
  logits, state, next_positions = prefill(model, params, visual, tokens, positions, room)
  if beams == 1:
    return logits, state, next_positions
  rows = jnp.repeat(jnp.arange(tokens.shape[0]), beams)
  return logits[rows], state.take(rows), next_positions[rows]


def step(model, params, state, tokens, positions, rows=None):
  """One token for each of the state's N rows: tokens, positions [N] int32; rows [N] int32, the
  row each continues (beam search; None: greedy) -> (logits [N, V], the advanced state)."""
  if rows is not None:
    state = state.take(rows, keep_media=True)
  logits, state = extend(model, params, tokens[:, None], positions[:, None], state)
  return logits[:, -1], state


def abstract_inputs(config: ml_collections.ConfigDict, mesh, batch: int, length: int,
                    images: int, beams: int):
  """ShapeDtypeStructs split over the mesh axes of `batch`: pixels [B, M, 1, H, W, 3] float32,
  visual tokens [B, M, R, D], prompts [B, L] int32 (their positions alike) and a token for
  every beam [B * beams] int32 (their positions and rows alike)."""
  def batched(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(
        mesh, sharding.rules(config), len(shape)))
  size, resampler = config.model.vision.image_size, config.model.resampler
  return (batched((batch, images, 1, size, size, 3), jnp.float32),
          batched((batch, images, resampler.num_latents, resampler.dim),
                  jnp.dtype(config.model.dtype)),
          batched((batch, length), jnp.int32), batched((batch * beams,), jnp.int32))


def abstract_state(prefill_fn, args, mesh, axis_rules):
  """The decode state `prefill_fn(*args)` returns, as ShapeDtypeStructs split like the
  activations (`FlamingoDecodeState.logical_axes`): rows over the mesh axes of `batch`, the
  caches' heads over those of `heads`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    _, state, _ = jax.eval_shape(prefill_fn, *args)
  shardings = sharding.shardings(state.logical_axes(), state, mesh, axis_rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                      shardings)


def compile_program(fn, args, mesh, axis_rules, **jit_kwargs):
  """(per-chip memory of fn(*args) compiled on abstract arguments (`pod.memory`), or why it does
  not fit; its model FLOPs per chip; seconds to compile)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(axis_rules):
    start = time.perf_counter()
    try:
      memory = pod.memory(jax.jit(fn, **jit_kwargs).lower(*args).compile(),
                          mesh.devices.flat[0].device_kind)
    except jax.errors.JaxRuntimeError as error:
      # libtpu refuses a program that does not fit in HBM: the answer sought, not a fault.
      if "RESOURCE_EXHAUSTED" not in str(error):
        raise
      memory = "does not fit: " + str(error).splitlines()[0].split(": ", 1)[-1]
    seconds = time.perf_counter() - start
    flops = flops_lib.count(fn, *args)
  return memory, flops / mesh.size, seconds


def compile_programs(config: ml_collections.ConfigDict, mesh, params, batch: int, length: int,
                     images: int, new_tokens: int, beams: int) -> dict:
  """{"encode", "prefill", "decode step": `compile_program`'s (memory, FLOPs, seconds)} for
  `params` (abstract, placed on `mesh`)."""
  model, axis_rules = factory.build_model(config), sharding.rules(config)
  pixels, visual, prompts, token = abstract_inputs(config, mesh, batch, length, images, beams)
  start = lambda p, v, t, q: prefill_beams(model, p, v, t, q, new_tokens - 1, beams)
  start_args = (params, visual, prompts, prompts)
  state = abstract_state(start, start_args, mesh, axis_rules)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  by_row = lambda ndim: sharding.batch_sharding(mesh, axis_rules, ndim)
  return {
      "encode": compile_program(lambda p, x: visual_tokens(model, p, x), (params, pixels),
                                mesh, axis_rules),
      "prefill": compile_program(start, start_args, mesh, axis_rules,
                                 out_shardings=(by_row(2), state_shardings, by_row(1))),
      # Continues from the state as prefill leaves it, in place (donated), as a loop would.
      "decode step": compile_program(
          lambda p, s, *rest: step(model, p, s, *rest),
          (params, state, token, token) + ((token,) if beams > 1 else ()), mesh, axis_rules,
          donate_argnums=1, out_shardings=(by_row(2), state_shardings)),
  }


def report(config: ml_collections.ConfigDict, topology: str, batch: int, length: int,
           images: int, new_tokens: int, beams: int, frozen_dtype: str = "bfloat16",
           mesh_sizes=()) -> str:
  """What the serving programs of `config` need of each chip of `topology`, as lines of text: for
  `batch` prompts of `length` tokens and `images` images, `new_tokens` new tokens and `beams`
  beams, on `config.mesh` (its data, fsdp and tensor sizes first replaced by `mesh_sizes`)."""
  devices = pod.devices(topology)
  mesh = sharding.command_line_mesh(config, mesh_sizes, devices)
  params = orbax_io.placement(config, mesh, frozen_dtype)
  programs = compile_programs(config, mesh, params, batch, length, images, new_tokens, beams)
  per_chip = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                 for x in jax.tree.leaves(params))
  lines = [
      f"topology {topology}: {len(devices)} x {devices[0].device_kind}",
      f"mesh {dict(mesh.shape)}",
      f"parameters {sum(x.size for x in jax.tree.leaves(params)) / 1e9:.2f}B, "
      f"{pod.gib(per_chip)} per chip (frozen in {jnp.dtype(frozen_dtype).name})",
      f"{batch} prompts of {length} tokens and {images} images, room for {new_tokens} new "
      f"tokens, {beams} beams",
  ]
  for name, (memory, flops, seconds) in programs.items():
    lines += [f"{name}: compiled in {seconds:.0f} s, model FLOPs per chip {flops:.3e}",
              f"{name} per chip: {memory}"]
  return "\n".join(lines)
