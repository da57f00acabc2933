"""Video decoding: a clip of frames at a fixed rate from a video file's bytes, with PyAV.

A clip is `num_frames` frames `1 / fps` seconds apart (the paper samples video at 1 FPS); each is
the frame on screen at its time, i.e. the last frame whose timestamp is at or before it, with
times counted from the first frame. Training starts the clip uniformly at random over the video
(`clip_start` with an rng), evaluation takes the centre clip. Frames are decoded in order and
decoding stops past the clip, so only the picked frames are held.

Rules (each a counter in `DataStats`):
- corrupt_video: bytes PyAV cannot open or decode, no video stream (or no decoder for it), or no
  timestamps to sample by -> the video is dropped.
- oversized_video: frames of more than `max_pixels` pixels, read from the stream header before
  decoding -> dropped.
- short_video: shorter than the clip (num_frames / fps seconds) -> the clip starts at 0 and its
  times past the end repeat the last frame (repaired).
"""

import io
from typing import Iterable

import av
import numpy as np

from flamingo_jax.data.images import MAX_PIXELS, DataStats

# Seconds: timestamps are rationals, so a frame exactly at a sample time must survive the float
# rounding of either.
TOLERANCE = 1e-6


def clip_start(duration: float, fps: float, num_frames: int,
               rng: np.random.Generator | None = None) -> float:
  """Start (seconds) of a clip of num_frames / fps seconds in a video of `duration` seconds:
  uniform over [0, duration - clip] with `rng` (training), else the centre; 0 if none fits."""
  slack = max(0.0, duration - num_frames / fps)
  return float(rng.uniform(0.0, slack)) if rng is not None else slack / 2


def sample_times(start: float, fps: float, num_frames: int) -> np.ndarray:
  """-> float64 [num_frames]: the clip's sample times in seconds, `1 / fps` apart."""
  return start + np.arange(num_frames) / fps


def frames_at(frames: Iterable[av.VideoFrame], times: np.ndarray) -> list[av.VideoFrame]:
  """Frames in presentation order -> the frame on screen at each of `times` (increasing, seconds
  from the first frame); times past the last frame get the last frame. Reads `frames` only up to
  the first frame past the last time; [] when there is no frame."""
  picked, last, first = [], None, None
  for frame in frames:
    first = frame.time if first is None else first
    while len(picked) < len(times) and times[len(picked)] + TOLERANCE < frame.time - first:
      picked.append(last)
    if len(picked) == len(times):
      return picked
    last = frame
  if last is None:
    return []
  return picked + [last] * (len(times) - len(picked))


def stream_duration(data: bytes, stream: av.VideoStream) -> float | None:
  """Seconds of `stream` in the container `data`: from its header, else from its packets'
  timestamps (files from streaming writers, e.g. WebM, have no duration in their header), read
  by demuxing a second opening, without decoding. None when packets have no timestamps."""
  if stream.duration is not None:
    return float(stream.duration * stream.time_base)
  with av.open(io.BytesIO(data)) as container:
    packets = [p for p in container.demux(container.streams[stream.index])
               if p.pts is not None]
  if not packets:
    return None
  end = max(p.pts + p.duration for p in packets)
  return float((end - min(p.pts for p in packets)) * stream.time_base)


def decode_video(data: bytes, stats: DataStats, fps: float = 1.0, num_frames: int = 8,
                 rng: np.random.Generator | None = None,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray | None:
  """Container bytes (mp4, webm, ...) -> uint8 [num_frames, H, W, 3], the clip of the first
  video stream at `fps` placed by `clip_start`, or None (counted) when a rule drops it."""
  try:
    with av.open(io.BytesIO(data)) as container:
      stream = next(iter(container.streams.video), None)
      if stream is None or stream.codec_context is None:  # No video, or no decoder for it.
        stats.count("corrupt_video")
        return None
      width, height = stream.codec_context.width, stream.codec_context.height
      if width * height > max_pixels:
        stats.count("oversized_video")
        return None
      duration = stream_duration(data, stream)
      if duration is None:
        stats.count("corrupt_video")
        return None
      times = sample_times(clip_start(duration, fps, num_frames, rng), fps, num_frames)
      frames = frames_at(container.decode(stream), times)
      # Converted at the header's size: a stream may change resolution midway.
      pixels = {id(f): f.to_ndarray(format="rgb24", width=width, height=height) for f in frames}
  except av.FFmpegError:
    stats.count("corrupt_video")
    return None
  if not frames:
    stats.count("corrupt_video")
    return None
  if duration < num_frames / fps:
    stats.count("short_video")
  return np.stack([pixels[id(f)] for f in frames])
