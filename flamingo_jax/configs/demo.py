"""The embedded default of `make demo` (flamingo_jax/demo.py): a miniature Flamingo whose frozen
LM and vision tower are pretrained here first, on the offline synthetic source, then bridged by
a resampler and gated cross-attention trained on the loss-weighted synthetic mixture, and
evaluated few-shot on held-out synthetic tasks. Sized to run in minutes on a 2-core CPU."""

import ml_collections

from flamingo_jax.configs.base import (model_config, optimizer_config, set_precision,
                                       training_sections)


# Stage 1 trains a BPE vocabulary of this size on the synthetic text (flamingo_jax.demo).
VOCAB_SIZE = 512


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(
      vision=dict(kind="vit", image_size=32, patch_size=8, width=64, depth=2, num_heads=4,
                  mlp_dim=128, class_token=True, pre_norm=True, final_norm=True,
                  activation="gelu", norm_eps=1e-5, patch_bias=False),
      lm=dict(vocab_size=VOCAB_SIZE,
              embed_dim=128, num_layers=4, num_heads=4, mlp_dim=256, norm="rms",
              activation="silu", gated_mlp=True, position="rope", max_length=512,
              tie_embeddings=True),
      # The paper's resampler and gated blocks at toy width; a gated block before every LM
      # block, as Flamingo-3B has.
      resampler=dict(dim=64, depth=2, num_latents=8, num_heads=4, head_dim=16, max_frames=1),
      xattn=dict(every=1, head_dim=32),
  )
  # Stage 1: a vocabulary in which every word of the synthetic language, made-up words
  # included, is one token, as common words are for a real LM. A made-up word is then one token
  # to copy from the context, which a small LM learns in minutes; copying it byte by byte needs
  # induction heads, which form far later. The demo sets `data.vocabulary` to the model it trains.
  config.tokenizer = ml_collections.ConfigDict(dict(vocab_size=VOCAB_SIZE, num_examples=2000))
  config.data = ml_collections.ConfigDict(dict(
      vocabulary="", strategy="accumulate", seed=0, split="train", task_modules=(),
      num_shards=0,  # Shards the batches are read in (mixtures.py); 0: one per process.
      # Binding episodes name their kinds' colours ("This is a red dax."): a miniature LM
      # binds words to what only images show no better than chance (data.synthetic
      # .binding_example says why); configs/demo_smollm2.py keeps Frozen's pure form. The
      # bridge's episodes show each kind 4 times, as the 8-shot evaluation does (the LM's, 2).
      synthetic=dict(seed=0, split_sizes={"train": 100_000, "validation": 1_000},
                     shuffle_buffer_size=64, ways=2, shots=4, name_colours=True),
      tasks={
          # Documents get the paper's up to 5 images; pairs and VQA lower weights, as the
          # paper's pair datasets have. Binding documents are short, so a step takes twice as
          # many.
          "synthetic_interleaved": dict(weight=1.0, batch_size=8, max_length=96, max_images=5),
          "synthetic_binding": dict(weight=1.0, batch_size=16, max_length=80, max_images=9),
          "synthetic_vqa": dict(weight=0.5, batch_size=8, max_length=16, max_images=1),
          "synthetic_pairs": dict(weight=0.2, batch_size=8, max_length=20, max_images=1),
      },
  ))
  config.update(training_sections(num_steps=600, log_every=25, checkpoint_every=200))
  set_precision(config, "float32")
  config.train.optimizer.update(learning_rate=3e-3, warmup_steps=20)
  # Stage 2: the LM on the mixture's text (flamingo_jax.train.lm_pretraining), with repeated random
  # spans from which its induction heads form: few-shot binding copies a word with them. It
  # learns to copy the word after a named colour (over its prior for a shape there, which
  # captions teach) from episodes of 2 examples a kind, not from the bridge's longer ones.
  lm_optimizer = optimizer_config()
  lm_optimizer.update(learning_rate=3e-3, warmup_steps=50, weight_decay=0.1, no_decay=())
  config.lm_pretraining = ml_collections.ConfigDict(dict(
      num_steps=1400, log_every=25, optimizer=lm_optimizer,
      induction=dict(batch_size=32, span=24, weight=1.0),
      data=dict(synthetic=dict(shots=2), tasks=dict(synthetic_binding=dict(
          batch_size=32, max_length=40, max_images=5)))))
  # Stage 3: the contrastive vision tower (flamingo_jax.train.contrastive).
  config.contrastive = ml_collections.ConfigDict(dict(
      task="synthetic_pairs", num_steps=300, batch_size=64, learning_rate=1e-3,
      warmup_steps=30, log_every=10, embed_dim=64,
      text=dict(width=64, depth=2, num_heads=4, max_length=64)))
  # Stage 5: the few-shot evaluation (flamingo_jax.evaluation.harness).
  config.demo = ml_collections.ConfigDict(dict(
      eval=dict(shots=(0, 4, 8), num_queries=64, num_support=200, batch_size=16, beam_size=1,
                # Tokens are words: a caption has up to ~16 and a stop.
                max_new_tokens=dict(synthetic_caption=20, synthetic_vqa=4,
                                    synthetic_binding=4)),
  ))
  return config
