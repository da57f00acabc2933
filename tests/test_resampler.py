"""Perceiver Resampler: a fixed number of visual tokens whatever the input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flamingo_jax.flamingo.resampler import PerceiverResampler, interpolate_time


@pytest.mark.parametrize("frames,patches", [(1, 5), (1, 49), (3, 16), (8, 4), (12, 9)])
def test_resampler_returns_64_tokens_per_medium(frames, patches):
  resampler = PerceiverResampler(dim=32, depth=2, num_latents=64, num_heads=2, head_dim=8,
                                 mlp_ratio=4, activation="squared_relu", max_frames=8,
                                 norm_eps=1e-5)
  features = jax.random.normal(jax.random.key(0), (2, 3, frames, patches, 24))
  params = resampler.init(jax.random.key(1), features)
  out = resampler.apply(params, features)
  assert out.shape == (2, 3, 64, 32)
  assert bool(jnp.isfinite(out).all())


def test_temporal_embeddings_interpolate_beyond_the_trained_frames():
  trained = jax.random.normal(jax.random.key(0), (8, 4))
  np.testing.assert_array_equal(interpolate_time(trained, 3), trained[:3])
  stretched = interpolate_time(trained, 30)
  assert stretched.shape == (30, 4)
  # Linear interpolation stays within the trained values' range, frame by frame.
  assert bool((stretched <= trained.max(0) + 1e-6).all())
  assert bool((stretched >= trained.min(0) - 1e-6).all())
  np.testing.assert_allclose(stretched.mean(0), trained.mean(0), atol=0.15)


def test_media_are_resampled_independently():
  resampler = PerceiverResampler(dim=16, depth=1, num_latents=4, num_heads=2, head_dim=8,
                                 mlp_ratio=4, activation="squared_relu", max_frames=8,
                                 norm_eps=1e-5)
  features = jax.random.normal(jax.random.key(0), (1, 2, 1, 6, 16))
  params = resampler.init(jax.random.key(1), features)
  out = resampler.apply(params, features)
  changed = resampler.apply(params, features.at[:, 1].set(0.0))
  np.testing.assert_array_equal(out[:, 0], changed[:, 0])
  assert not np.allclose(out[:, 1], changed[:, 1])
