"""Checkpoints: this library's own (orbax_io.py), and other libraries' pretrained weights.

Imports go through one engine (engine.py: check shapes, read lazily with tensors.py, map,
place with shardings, report) by a mapping table per family, written in torch_layouts.py's
terms: hf_lm, gguf_lm, vit, efficientnet, open_flamingo, none of which imports another
(.importlinter). lm_sources.py, vision_sources.py and flamingo_sources.py compose them into
Flamingo checkpoints; convert.py is their command line.
"""
