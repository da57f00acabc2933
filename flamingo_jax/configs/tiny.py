"""A miniature Flamingo that runs on a CPU in seconds: ViT tower, LLaMA-style LM, the paper's
resampler and gated blocks at toy width, on a byte vocabulary, fed by the offline synthetic
tasks in the paper's accumulate mixture. For tests and smoke runs; its weights are random."""

import ml_collections

from flamingo_jax.configs.base import model_config, set_precision, training_sections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(
      vision=dict(kind="vit", image_size=32, patch_size=8, width=48, depth=2, num_heads=3,
                  mlp_dim=96, class_token=True, pre_norm=True, final_norm=True,
                  activation="gelu", norm_eps=1e-5, patch_bias=False),
      lm=dict(vocab_size=259,  # seqio.ByteVocabulary: 256 bytes + pad, eos, unk.
              embed_dim=64, num_layers=4, num_heads=4, num_kv_heads=2,
              mlp_dim=128, norm="rms", activation="silu", gated_mlp=True, position="rope",
              max_length=512),
      resampler=dict(dim=48, depth=2, num_latents=8, num_heads=2, head_dim=16, max_frames=4),
      xattn=dict(every=2, head_dim=16),
  )
  config.data = ml_collections.ConfigDict(dict(
      vocabulary="byte",
      strategy="accumulate",
      seed=0,
      split="train",
      num_shards=0,  # Shards the batches are read in (mixtures.py); 0: one per process.
      task_modules=(),
      synthetic=dict(seed=0, split_sizes={"train": 100_000, "validation": 1_000},
                     shuffle_buffer_size=64),
      tasks={
          # Documents get the paper's 5 images; pairs short sequences and a lower weight.
          "synthetic_interleaved": dict(weight=1.0, batch_size=4, max_length=128, max_images=5),
          "synthetic_binding": dict(weight=1.0, batch_size=4, max_length=128, max_images=5),
          "synthetic_pairs": dict(weight=0.2, batch_size=8, max_length=48, max_images=1),
      },
  ))
  config.update(training_sections(num_steps=300, log_every=10, checkpoint_every=100))
  # Float32 throughout, so that sharded and single-device steps agree to rounding.
  set_precision(config, "float32")
  config.train.optimizer.warmup_steps = 20
  config.train.optimizer.learning_rate = 3e-3
  return config
