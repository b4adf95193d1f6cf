"""Samples with several images or a video: loading, frame sampling, and the jsonl keys.

Expected frame indices and counts are worked out by hand in the comments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

import tokenbench
from tokenbench.fixtures import VIDEO_FPS
from tokenbench.task import Sample, TaskDataError
from tokenbench.testing import write_jsonl_task, write_multi_image_jsonl_task, write_video_jsonl_task


def grey(value: int, size: tuple[int, int] = (4, 4)) -> Image.Image:
    return Image.new("RGB", size, (value, value, value))


def level(im: Image.Image) -> int:
    """The red value of the top-left pixel (the frames below are flat grey or flat colour)."""
    return im.getpixel((0, 0))[0]


def sample(**kw) -> Sample:
    return Sample(**{"id": "s1", "image": None, "question": "q", "answers": ("a",), **kw})


def jsonl(tmp_path: Path, *objs: dict) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def load(path: Path) -> list[Sample]:
    return list(tokenbench.get_registry().load("tasks", "jsonl")(str(path)).load())


def write_video(path: Path, levels: list[int], fps: int, size: int = 16) -> Path:
    """A flat-grey mpeg4 video, one frame per entry of ``levels``, at ``fps`` frames a second."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for v in levels:
            container.mux(stream.encode(av.VideoFrame.from_image(grey(v, (size, size)))))
        container.mux(stream.encode())
    return path


# --- several images --------------------------------------------------------------------
def test_multi_image_loads_every_image_in_order(tmp_path: Path) -> None:
    grey(10).save(tmp_path / "a.png")
    s = sample(image=[str(tmp_path / "a.png"), grey(20, (3, 5)), lambda: grey(30, (2, 2))])
    images = s.load_images()
    assert [level(im) for im in images] == [10, 20, 30]
    assert [im.size for im in images] == [(4, 4), (3, 5), (2, 2)]
    assert all(im.mode == "RGB" for im in images)
    assert s.num_images == 3 and not s.has_video


def test_load_image_of_a_multi_image_sample_is_the_first() -> None:
    s = sample(image=(grey(40), grey(50)))
    assert level(s.load_image()) == 40
    assert s.num_images == 2


def test_single_image_sample_is_unchanged(tmp_path: Path) -> None:
    Image.new("L", (6, 6), 70).save(tmp_path / "a.png")
    s = sample(image=str(tmp_path / "a.png"))
    assert s.num_images == 1
    assert s.load_image().mode == "RGB" and level(s.load_image()) == 70
    assert [level(im) for im in s.load_images()] == [70]


def test_video_only_sample_has_no_images() -> None:
    s = sample(video=[grey(1), grey(2)])
    assert s.num_images == 0 and s.load_images() == [] and s.has_video
    with pytest.raises(TaskDataError, match="s1 has no image"):
        s.load_image()


def test_lazy_images_are_read_only_when_loaded() -> None:
    calls: list[int] = []

    def lazy(v: int):
        def read() -> Image.Image:
            calls.append(v)
            return grey(v)

        return read

    s = sample(image=[lazy(1), lazy(2)], video=[lazy(i) for i in range(10, 20)])
    assert calls == []
    assert level(s.load_image()) == 1 and calls == [1]
    s.load_images()
    assert calls == [1, 1, 2]
    calls.clear()
    s.load_video(num_frames=3)  # linspace(0, 9, 3) = 0, 4.5, 9 → round → 0, 4, 9: only those frames are read
    assert calls == [10, 14, 19]


def test_unreadable_image_in_a_list_names_the_file_and_the_sample(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    s = sample(image=[grey(1), str(bad)])
    with pytest.raises(TaskDataError) as exc:
        s.load_images()
    msg = str(exc.value)
    assert "\n" not in msg and str(bad) in msg and "s1" in msg


# --- a video given as frames -----------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "num_frames", "indices"),
    [
        (10, 4, [0, 3, 6, 9]),  # linspace(0, 9, 4) = 0, 3, 6, 9
        (8, 3, [0, 4, 7]),  # 0, 3.5, 7 → 3.5 rounds half to even: 4
        (16, 5, [0, 4, 8, 11, 15]),  # 0, 3.75, 7.5, 11.25, 15 → 7.5 rounds to 8
        (3, 5, [0, 0, 1, 2, 2]),  # 0, 0.5, 1, 1.5, 2 → 0, 0, 1, 2, 2: frames repeat
        (5, None, [0, 1, 2, 3, 4]),  # every frame
    ],
)
def test_frame_list_subsampled_by_num_frames(n: int, num_frames: int | None, indices: list[int]) -> None:
    s = sample(video=[grey(10 * i) for i in range(n)])
    assert [level(im) // 10 for im in s.load_video(num_frames=num_frames)] == indices


def test_frame_list_of_paths(tmp_path: Path) -> None:
    for i in range(4):
        grey(50 * i).save(tmp_path / f"{i}.png")
    s = sample(video=[str(tmp_path / f"{i}.png") for i in range(4)])
    frames = s.load_video(num_frames=2)
    assert [level(im) for im in frames] == [0, 150] and all(im.mode == "RGB" for im in frames)


def test_frame_list_is_taken_as_already_sampled_by_fps() -> None:
    s = sample(video=[grey(i) for i in range(6)])
    assert [level(im) for im in s.load_video(fps=1)] == list(range(6))
    # with fps, num_frames is a cap: a longer list is subsampled (linspace(0, 5, 3) = 0, 2.5, 5 → 0, 2, 5), a shorter one kept
    assert [level(im) for im in s.load_video(fps=1, num_frames=3)] == [0, 2, 5]
    assert [level(im) for im in s.load_video(fps=1, num_frames=16)] == list(range(6))


def test_bad_num_frames_and_no_video() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        sample(video=[grey(1)]).load_video(num_frames=0)
    with pytest.raises(TaskDataError, match="s1 has no video"):
        sample(image=grey(1)).load_video()


def test_at_rate_picks_the_nearest_frame_and_the_earlier_on_a_tie() -> None:
    from tokenbench.video import at_rate

    frames = [(10.0, "a"), (10.2, "b"), (10.4, "c"), (10.5, "d"), (11.0, "e")]  # times count from 10.0
    # targets 0, .25, .5, .75, 1: .25 is nearest .2 (b); .75 ties .5 and 1.0: the earlier, d
    assert list(at_rate(frames, fps=4)) == ["a", "b", "d", "d", "e"]
    with pytest.raises(ValueError, match="fps"):
        list(at_rate(frames, fps=0))


# --- a video file ----------------------------------------------------------------------
def test_video_file_every_frame_and_num_frames(tmp_path: Path) -> None:
    levels = [16 * i for i in range(12)]  # 12 frames at 4 fps: 3 s
    s = sample(video=str(write_video(tmp_path / "v.mp4", levels, fps=4)))
    frames = s.load_video()
    assert len(frames) == 12 and frames[0].size == (16, 16) and frames[0].mode == "RGB"
    # linspace(0, 11, 4) = 0, 3.67, 7.33, 11 → 0, 4, 7, 11 (mpeg4 is lossy: compare within a few levels)
    picked = [level(im) for im in s.load_video(num_frames=4)]
    assert [round(v / 16) for v in picked] == [0, 4, 7, 11]


@pytest.mark.parametrize(
    ("fps", "indices"),
    [
        (2, [0, 2, 4, 6, 8, 10]),  # 3 s at 2 fps: targets 0, .5, 1, …, 2.5 s; frames every .25 s
        (1, [0, 4, 8]),  # targets 0, 1, 2 s (3 s is past the last frame, at 2.75 s)
        (4, list(range(12))),  # the video's own rate: every frame
        (3, [0, 1, 3, 4, 5, 7, 8, 9, 11]),  # targets k/3 s: nearest frames 0, .25, .75, 1, 1.25, 1.75, 2, 2.25, 2.75
    ],
)
def test_video_file_sampled_at_a_rate(tmp_path: Path, fps: float, indices: list[int]) -> None:
    levels = [16 * i for i in range(12)]
    s = sample(video=str(write_video(tmp_path / "v.mp4", levels, fps=4)))
    assert [round(level(im) / 16) for im in s.load_video(fps=fps)] == indices
    assert [round(level(im) / 16) for im in s.load_video(fps=fps, num_frames=12)] == indices  # a cap the rate stays under


def test_video_file_at_a_rate_capped_by_num_frames(tmp_path: Path) -> None:
    s = sample(video=str(write_video(tmp_path / "v.mp4", [16 * i for i in range(12)], fps=4)))
    # at 2 fps: frames 0, 2, 4, 6, 8, 10 (6 of them); at most 4: linspace(0, 5, 4) = 0, 1.67, 3.33, 5 → 0, 2, 3, 5 of those
    assert [round(level(im) / 16) for im in s.load_video(fps=2, num_frames=4)] == [0, 4, 6, 10]
    assert [round(level(im) / 16) for im in s.load_video(fps=2, num_frames=6)] == [0, 2, 4, 6, 8, 10]


def test_video_file_without_a_frame_count_in_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import av

    from tokenbench import video

    path = write_video(tmp_path / "v.mkv", [16 * i for i in range(12)], fps=4)  # Matroska keeps no frame count
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    s = sample(video=str(path))
    assert [round(level(im) / 16) for im in s.load_video(num_frames=4)] == [0, 4, 7, 11]
    assert [round(level(im) / 16) for im in s.load_video(fps=2, num_frames=4)] == [0, 4, 6, 10]
    for wrong in (1, 5, 100):  # a header that under- or over-counts costs a pass, not a wrong answer
        monkeypatch.setattr(video, "_rate_count", lambda *a, n=wrong: n)
        assert [round(level(im) / 16) for im in s.load_video(fps=2, num_frames=4)] == [0, 4, 6, 10]
        assert [round(level(im) / 16) for im in s.load_video(fps=2, num_frames=6)] == [0, 2, 4, 6, 8, 10]


def test_corrupt_video_file_is_one_line_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(TaskDataError) as exc:
        sample(video=str(bad)).load_video()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: cannot read video for sample s1 (")


def test_missing_video_file(tmp_path: Path) -> None:
    with pytest.raises(TaskDataError, match="nope.mp4: cannot read video for sample s1"):
        sample(video=str(tmp_path / "nope.mp4")).load_video(num_frames=2)


def test_missing_pyav_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.mp4"
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(TaskDataError) as exc:
        sample(video=str(path)).load_video()
    assert str(exc.value) == f"{path}: video decoding needs PyAV (pip install 'tokenbench[video]'); sample s1"
    # a frame list needs no PyAV
    assert len(sample(video=[grey(1), grey(2)]).load_video()) == 2


# --- jsonl -----------------------------------------------------------------------------
def test_jsonl_images_list(tmp_path: Path) -> None:
    path = write_multi_image_jsonl_task(tmp_path, n=4, images_per_sample=3)
    samples = load(path)
    assert len(samples) == 4
    s = samples[1]
    assert s.num_images == 3 and not s.has_video
    assert s.image == tuple(str(tmp_path / "images" / f"1_{j}.png") for j in range(3))
    images = s.load_images()
    # sample 1's images are coloured (1 + j) % 3 → green, blue, red; the answer is the last one's
    assert [im.getpixel((16, 16)) for im in images] == [(30, 200, 30), (30, 30, 220), (220, 30, 30)]
    assert s.answers == ("red",)


def test_jsonl_video_frame_list(tmp_path: Path) -> None:
    path = write_video_jsonl_task(tmp_path, n=3, frames=8)
    samples = load(path)
    assert [s.id for s in samples] == ["v0", "v1", "v2"]
    s = samples[0]
    assert s.num_images == 0 and s.has_video and len(s.video) == 8
    assert len(s.load_video()) == 8 and len(s.load_video(num_frames=3)) == 3


def test_jsonl_video_file(tmp_path: Path) -> None:
    path = write_video_jsonl_task(tmp_path, n=2, frames=8, as_file=True)
    s = load(path)[1]
    assert isinstance(s.video, str) and Path(s.video).is_file()
    assert len(s.load_video()) == 8
    assert len(s.load_video(fps=VIDEO_FPS / 2)) == 4  # 8 frames at 4 fps = 2 s; at 2 fps: 0, .5, 1, 1.5 s
    # sample 1 is green; its square sits at the left edge in the first frame
    r, g, b = s.load_video()[0].getpixel((4, 4))
    assert g > 150 and r < 80 and b < 80


def test_jsonl_images_with_a_video(tmp_path: Path) -> None:
    grey(5).save(tmp_path / "a.png")
    grey(6).save(tmp_path / "f0.png")
    write_video(tmp_path / "clip.mp4", [0, 64], fps=2)
    path = jsonl(
        tmp_path,
        {"id": 1, "images": ["a.png"], "video": ["f0.png", "a.png"], "question": "q", "answers": ["x"]},
        {"id": 2, "image": "a.png", "video": "clip.mp4", "question": "q", "answers": ["x"]},
    )
    one, two = load(path)
    assert one.num_images == 1 and [level(im) for im in one.load_video()] == [6, 5]
    assert two.image == str(tmp_path / "a.png") and two.video == str(tmp_path / "clip.mp4") and len(two.load_video()) == 2


def test_jsonl_image_and_images_together_is_an_error(tmp_path: Path) -> None:
    grey(5).save(tmp_path / "a.png")
    path = jsonl(tmp_path, {"id": 1, "image": "a.png", "images": ["a.png"], "question": "q", "answers": ["x"]})
    with pytest.raises(TaskDataError) as exc:
        load(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}:1: ") and "'image'" in msg and "'images'" in msg


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        ({"images": ["a.png", "b.png"]}, "images[1] 'b.png' not found"),
        ({"video": "clip.mp4"}, "video 'clip.mp4' not found"),
        ({"video": ["a.png", "f9.png"]}, "video[1] 'f9.png' not found"),
        ({"image": "a.png", "video": []}, "'video' must be a non-empty list"),
        ({"images": []}, "'images' must be a non-empty list"),
        ({"images": "a.png"}, "'images' must be a non-empty list"),
        ({}, "missing key(s) image, images or video"),
    ],
)
def test_jsonl_bad_media_is_one_line(tmp_path: Path, obj: dict, needle: str) -> None:
    grey(5).save(tmp_path / "a.png")
    path = jsonl(tmp_path, {"id": 0, "image": "a.png", "question": "q", "answers": ["x"]}, {"id": 1, "question": "q", "answers": ["x"], **obj})
    with pytest.raises(TaskDataError) as exc:
        load(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{path}:2: ") and needle in msg


def test_jsonl_single_image_unchanged(tmp_path: Path) -> None:
    samples = load(write_jsonl_task(tmp_path, n=3))
    assert [s.image for s in samples] == [str(tmp_path / "images" / f"{i}.png") for i in range(3)]
    assert all(s.video is None and s.num_images == 1 for s in samples)
