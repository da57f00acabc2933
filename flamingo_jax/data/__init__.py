"""Data: the paper's sequences from on-disk formats and synthetic sources, as seqio Tasks, mixed
with per-dataset loss weights.

sequences (token layout) <- preprocess (raw example -> model example, bad-input rules)
<- sources (JSONL, WebDataset, TFRecord, TFDS; webdataset, video, images read the bytes)
-> tasks (register a dataset) -> mixtures (strategies, batches, resumable position);
synthetic: the offline source with known content.
"""
