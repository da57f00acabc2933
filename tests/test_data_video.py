"""Video decoding: the right frames at the requested rate, seeded clips, bad videos counted."""

import io
import wave

import av
import numpy as np
import pytest

from flamingo_jax.data.images import DataStats
from flamingo_jax.data.video import clip_start, decode_video, sample_times

RATE = 10  # Source frames per second.


class Unseekable:
  """A write-only sink: muxers cannot go back to write the duration into the header."""

  def __init__(self):
    self.data = bytearray()

  def write(self, chunk):
    self.data += chunk
    return len(chunk)


def encode(num_frames: int, fmt: str = "mp4", seekable: bool = True) -> bytes:
  """A 64x64 H.264 video at RATE fps whose frame k is flat grey 8 + 6k, so it is recognised
  through lossy compression."""
  sink = io.BytesIO() if seekable else Unseekable()
  with av.open(sink, "w", format=fmt) as container:
    stream = container.add_stream("libx264", rate=RATE)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    for k in range(num_frames):
      frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 8 + 6 * k, np.uint8), "rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return bytes(sink.getvalue() if seekable else sink.data)


def wav_audio() -> bytes:
  buffer = io.BytesIO()
  with wave.open(buffer, "wb") as audio:
    audio.setnchannels(1)
    audio.setsampwidth(2)
    audio.setframerate(8000)
    audio.writeframes(bytes(16000))
  return buffer.getvalue()


def frame_numbers(frames: np.ndarray) -> list[int]:
  assert frames.std(axis=(1, 2, 3)).max() < 2  # Each picked frame is one flat source frame.
  return [round((f.mean() - 8) / 6) for f in frames]


@pytest.fixture(scope="module")
def four_seconds():
  return encode(4 * RATE)


def test_sample_times_and_clip_start():
  np.testing.assert_allclose(sample_times(0.5, 2.0, 4), [0.5, 1.0, 1.5, 2.0])
  assert clip_start(10.0, 1.0, 4) == 3.0  # Evaluation: the centre clip.
  assert clip_start(3.0, 1.0, 4) == 0.0  # Shorter than the clip.
  starts = [clip_start(10.0, 1.0, 4, np.random.default_rng(seed)) for seed in range(20)]
  assert all(0.0 <= s <= 6.0 for s in starts) and len(set(starts)) == 20
  assert clip_start(10.0, 1.0, 4, np.random.default_rng(3)) == starts[3]


def test_frames_are_sampled_at_the_requested_rate(four_seconds):
  stats = DataStats()
  frames = decode_video(four_seconds, stats, fps=2.0, num_frames=8)
  assert frames.shape == (8, 64, 64, 3) and frames.dtype == np.uint8
  assert frame_numbers(frames) == list(range(0, 40, 5))
  assert stats.counts() == {}


def test_evaluation_takes_the_centre_clip(four_seconds):
  # A 2 s clip of 4 s starts at 1 s; a frame exactly at a sample time is the one on screen.
  assert frame_numbers(decode_video(four_seconds, DataStats(), num_frames=2)) == [10, 20]
  # A 1 s clip at 4 fps: times 1.5, 1.75, 2, 2.25 s.
  assert frame_numbers(decode_video(four_seconds, DataStats(), fps=4.0, num_frames=4)) == [
      15, 17, 20, 22]


def test_training_start_is_random_and_seeded(four_seconds):

  def clip(seed):
    return frame_numbers(decode_video(four_seconds, DataStats(), fps=2.0, num_frames=4,
                                      rng=np.random.default_rng(seed)))

  clips = [clip(seed) for seed in range(6)]
  assert clip(0) == clips[0]
  assert len({c[0] for c in clips}) > 1
  for seed, numbers in enumerate(clips):
    start = clip_start(4.0, 2.0, 4, np.random.default_rng(seed))
    assert numbers == [int((start + k / 2.0) * RATE) for k in range(4)]


def test_short_video_repeats_its_last_frame():
  stats = DataStats()
  frames = decode_video(encode(15), stats, fps=2.0, num_frames=6)  # 1.5 s for a 3 s clip.
  assert frame_numbers(frames) == [0, 5, 10, 14, 14, 14]
  assert stats.counts() == {"short_video": 1}


def test_duration_from_packets_when_the_header_has_none():
  data = encode(4 * RATE, fmt="matroska", seekable=False)
  with av.open(io.BytesIO(data)) as container:
    assert container.streams.video[0].duration is None and container.duration is None
  stats = DataStats()
  assert frame_numbers(decode_video(data, stats, num_frames=2)) == [10, 20]  # Centred in 4 s.
  assert stats.counts() == {}


@pytest.mark.parametrize("make", [
    lambda: b"",
    lambda: b"not a video at all" * 50,
    lambda: encode(20)[:1500],  # Cut before the index at its end.
    lambda: encode(20, fmt="h264"),  # A raw stream: no timestamps.
    wav_audio,  # No video stream.
], ids=["empty", "garbage", "truncated", "raw_h264", "audio_only"])
def test_undecodable_videos_are_dropped_and_counted(make):
  stats = DataStats()
  assert decode_video(make(), stats) is None
  assert stats.counts() == {"corrupt_video": 1}


def test_oversized_video_is_rejected_from_its_header(four_seconds):
  stats = DataStats()
  assert decode_video(four_seconds, stats, max_pixels=64 * 64 - 1) is None
  assert stats.counts() == {"oversized_video": 1}
