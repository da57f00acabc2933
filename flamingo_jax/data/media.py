"""Media for prompts from image files, preprocessed as the model's vision tower expects
(`config.model.image_preprocessing`): the evaluation harness's benchmark images and video
frames, the generate CLI's --images.

    loader = MediaLoader(config.model)
    image = loader.image("a.jpg")                  # float32 [S, S, 3]
    frames = loader.clip(frame_paths, num_frames)  # float32 [num_frames, S, S, 3]
    frames = loader.clip_at_rate(frame_paths, 3.0, fps=3.0, num_frames=30)  # The paper's.
"""

import functools
from typing import Sequence

import ml_collections
import numpy as np

from flamingo_jax.data import images as images_lib
from flamingo_jax.data import video as video_lib

# Prompt images are used as they are: none of the web-scrape filters of training applies.
UNFILTERED = images_lib.ImageFilter(min_side=1, max_aspect=float("inf"))


class MediaLoader:
  """Image files -> float32 [S, S, 3], resized, cropped and normalised as the model's tower
  expects; each file is read once."""

  def __init__(self, model_config: ml_collections.ConfigDict):
    self.size = model_config.vision.image_size
    self.preprocessing = model_config.image_preprocessing
    self.stats = images_lib.DataStats()

  @functools.lru_cache(maxsize=4096)
  def image(self, path: str) -> np.ndarray:
    with open(path, "rb") as f:
      pixels = images_lib.decode(f.read(), self.stats, UNFILTERED)
    if pixels is None:
      raise ValueError(f"Cannot read the image {path}.")
    pixels = images_lib.resize_and_crop(pixels, self.size, self.preprocessing.resize)
    return images_lib.normalize(pixels, self.preprocessing.mean, self.preprocessing.std)

  def images(self, paths: Sequence[str]) -> np.ndarray:
    """float32 [len(paths), S, S, 3]."""
    return np.stack([self.image(p) for p in paths])

  def clip(self, frame_paths: Sequence[str], num_frames: int) -> np.ndarray:
    """float32 [num_frames, S, S, 3]: frames spread evenly over a video's frames (in time
    order), from the first to the last."""
    picked = np.linspace(0, len(frame_paths) - 1, num_frames).round().astype(int)
    return self.images([frame_paths[i] for i in picked])

  def clip_at_rate(self, frame_paths: Sequence[str], frames_fps: float, fps: float,
                   num_frames: int) -> np.ndarray:
    """float32 [num_frames, S, S, 3]: the video's centre clip of num_frames frames `1 / fps`
    seconds apart, from its frames extracted at `frames_fps` (frame k shows time k /
    frames_fps). As in training's decoding (`data.video`), each sample is the frame on screen
    at its time, and a video shorter than the clip starts it at 0 and repeats its last frame."""
    duration = len(frame_paths) / frames_fps
    times = video_lib.sample_times(video_lib.clip_start(duration, fps, num_frames), fps,
                                   num_frames)
    on_screen = np.floor(times * frames_fps + video_lib.TOLERANCE).astype(int)
    return self.images([frame_paths[i] for i in np.minimum(on_screen, len(frame_paths) - 1)])
