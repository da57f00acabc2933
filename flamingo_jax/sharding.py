"""Device meshes and the logical-axis rules that place parameters, optimiser state and batches.

Every parameter and large activation of the model carries logical axis names (`embed`, `mlp`,
`heads`, `batch`, ...). `config.partitioning.rules` maps them to the mesh axes of
`config.mesh` ("data", "fsdp", "tensor"); flax applies the rules in order and gives a mesh axis
to at most one dimension of an array, so `batch` (first) takes ("data", "fsdp") on activations,
while parameters, which have no batch axis, get `embed` on "fsdp" (ZeRO-3 style sharding) and
their head / MLP / vocabulary axes on "tensor" (Megatron style). Names without a rule, or whose
mesh axes are taken, are replicated.

Training, loading (`flamingo_jax.load(..., mesh=)`) and evaluation place arrays with these
helpers; one process or many (each host contributes its own rows of a batch: `global_batch`,
and reads back whole arrays: `gather`).
"""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, tensor) sizes; one of them may be -1: all the devices the others leave."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if num_devices % known:
      raise ValueError(f"{num_devices} devices do not split into {dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"there are {num_devices}")
  return tuple(sizes)


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A mesh over `devices` (default: all of them, every host's) laid out for the interconnect:
  on TPU, `mesh_utils` keeps the tensor axis within a chip's nearest neighbours."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(mesh_config, len(devices))
  grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES)


def command_line_mesh(config: ml_collections.ConfigDict, sizes=(), devices=None) -> Mesh:
  """The mesh of `config.mesh` over `devices` (default: all of them), its (data, fsdp, tensor)
  sizes first replaced by `sizes` (a CLI's --mesh), which `config.mesh` then records."""
  config.mesh.update(dict(zip(MESH_AXES, map(int, sizes))))
  return make_mesh(config.mesh, devices)


def one_device_mesh() -> Mesh:
  """This host's first device as a mesh of size 1 on every axis: a single-device run's."""
  return Mesh(np.asarray(jax.local_devices()[:1]).reshape(1, 1, 1), MESH_AXES)


def rules(config: ml_collections.ConfigDict) -> tuple:
  """The config's rules as ((logical, mesh axes), ...), tuples all the way down."""
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in config.partitioning.rules)


def divisible_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """`spec` with the mesh axes dropped from dimensions they do not divide (a 50,257-token
  vocabulary on 2-way tensor parallelism): those dimensions are replicated instead."""
  def fits(axes, size):
    axes = axes if isinstance(axes, tuple) else (axes,)
    return size % int(np.prod([mesh.shape[a] for a in axes])) == 0
  return PartitionSpec(*(axes if axes is None or fits(axes, size) else None
                         for axes, size in zip(spec, shape)))


def shardings(logical_specs, abstract, mesh: Mesh, axis_rules):
  """Trees of logical PartitionSpecs and of arrays (or their shapes) -> the tree of
  NamedShardings, replicating dimensions the mesh axes do not divide."""
  mesh_specs = nn.logical_to_mesh(logical_specs, axis_rules)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, divisible_spec(spec, x.shape, mesh)),
      mesh_specs, abstract, is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis_rules, ndim: int) -> NamedSharding:
  """Arrays with a leading batch axis: split over the mesh axes `batch` maps to."""
  if ndim == 0:
    return replicated(mesh)
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1),
                                                     axis_rules))


def batch_shards(mesh: Mesh, axis_rules) -> int:
  """How many ways `batch_sharding` splits a batch: a batch size must be a multiple of it."""
  axes = nn.logical_to_mesh_axes(("batch",), axis_rules)[0] or ()
  axes = axes if isinstance(axes, tuple) else (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def host_rows(mesh: Mesh, axis_rules, size: int) -> np.ndarray:
  """The rows of a batch of `size` that this host's devices hold under `batch_sharding`
  (sorted indices): what it contributes to `global_batch` and reads back with `local_rows`.
  All of them where the batch is not split across hosts."""
  indices = batch_sharding(mesh, axis_rules, 1).addressable_devices_indices_map((size,))
  return np.unique(np.concatenate([np.arange(size)[index] for index in indices.values()]))


def local_rows(array: jax.Array) -> np.ndarray:
  """A global array split along its first axis -> this host's rows (`host_rows`) as numpy,
  without moving other hosts' rows."""
  shards = {shard.index[0].indices(array.shape[0])[:2]: shard
            for shard in array.addressable_shards}
  return np.concatenate([np.asarray(shards[span].data) for span in sorted(shards)])


def params_mesh(params) -> Mesh:
  """The mesh a parameter tree lives on (`flamingo_jax.load(..., mesh=)`): this host's first
  device for parameters on one device (`flamingo_jax.create`)."""
  placement = jax.tree.leaves(params)[0].sharding
  return placement.mesh if isinstance(placement, NamedSharding) else one_device_mesh()


def global_batch(batches: dict, mesh: Mesh, axis_rules) -> dict:
  """This host's numpy batches -> global jax.Arrays sharded along the batch axis: every host
  contributes its own rows (`jax.make_array_from_process_local_data`)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(
          batch_sharding(mesh, axis_rules, np.ndim(x)), np.asarray(x)), batches)


def gather(tree):
  """Global jax.Arrays (sharded over any hosts' devices) -> numpy arrays, whole, on every host."""
  return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)
