"""Capture sources and the newest-frame grabber, on real image and video files (no camera).

Hardware failures (a camera unplugged mid-stream, a device that fails to reopen) are played by
small FrameSource subclasses; waits use generous deadlines on state, never fixed sleeps.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edge.capture import (
    SOURCES,
    CaptureError,
    FileSource,
    FolderSource,
    Frame,
    FrameGrabber,
    FrameSource,
    GStreamerSource,
    UrlSource,
    V4L2Source,
    make_grabber,
    make_source,
    mask_secrets,
)
from edge.capture import gstreamer as gstreamer_mod
from edge.config import FileCamera, FolderCamera, UrlCamera, V4L2Camera

DEADLINE_S = 5.0  # generous: only reached when something is broken
SIZE = (48, 64)  # H, W: small keeps encoding fast


def wait_until(pred: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def grey(level: int) -> np.ndarray:
    return np.full((*SIZE, 3), level, np.uint8)


def level_of(frame: Frame) -> int:
    """Which generated image a frame is: its mean grey level, robust to JPEG/MJPG loss."""
    return round(float(frame.image.mean()) / 20)


def drain(source: FrameSource, limit: int = 1000) -> list[Frame]:
    frames = []
    while (f := source.read()) is not None:
        frames.append(f)
        assert len(frames) < limit, "a finite source did not end"
    return frames


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """img_00..img_05 (grey level 20*i), one corrupt .jpg, and files that must be ignored."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        ext = ".png" if i == 4 else ".jpg"  # mixed formats, still name order
        assert cv2.imwrite(str(folder / f"img_{i:02d}{ext}"), grey(20 * i))
    (folder / "img_02b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.jpg").mkdir()  # a folder with an image suffix is not an image
    return folder


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    """An MJPG .avi of 8 frames at 100 fps, grey level 20*i."""
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 100.0, SIZE[::-1])
    assert writer.isOpened()
    for i in range(8):
        writer.write(grey(20 * i))
    writer.release()
    return path


class GatedSource(FrameSource):
    """A live camera whose frames arrive only when the test releases them."""

    live = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.is_open = False
        self.closes = 0

    def describe(self) -> str:
        return "gated test camera"

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self.closes += 1

    def read(self) -> Frame | None:
        while not self.gate.acquire(timeout=0.01):
            if self._interrupted.is_set():
                raise CaptureError("gated test camera: interrupted")
        return self._frame(grey(0), time.monotonic(), 1.0)

    def release(self, n: int) -> None:
        for _ in range(n):
            self.gate.release()


class FlakyCamera(FrameSource):
    """Plays a camera unplugged after `frames_before_drop` frames that then fails to reopen
    `failed_reopens` times (as a re-enumerating USB device does) before it works again."""

    live = True

    def __init__(self, frames_before_drop: int = 3, failed_reopens: int = 2) -> None:
        super().__init__()
        self.frames_before_drop = frames_before_drop
        self.failed_reopens = failed_reopens
        self.opens = 0
        self.closes = 0
        self.is_open = False
        self._served = 0

    def describe(self) -> str:
        return "flaky test camera"

    def open(self) -> None:
        self.opens += 1
        if 2 <= self.opens <= 1 + self.failed_reopens:
            raise CaptureError(f"flaky test camera: open attempt {self.opens} failed")
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self.closes += 1

    def read(self) -> Frame | None:
        assert self.is_open, "read on a closed source"
        self._served += 1
        if self.opens == 1 and self._served > self.frames_before_drop:
            raise CaptureError("flaky test camera: no frame from the device (disconnected?)")
        time.sleep(0.001)  # a camera's frame interval, shortened
        return self._frame(grey(0), time.monotonic(), 2.0)


# --- folder ----------------------------------------------------------------------------------


def test_folder_in_name_order_skips_corrupt_and_ends(image_folder: Path, caplog) -> None:
    source = FolderSource(image_folder, fps=240)
    assert not source.live
    with caplog.at_level(logging.WARNING), source:
        frames = drain(source)
        assert source.read() is None  # stays ended
    assert [level_of(f) for f in frames] == [0, 1, 2, 3, 4, 5]
    assert [f.index for f in frames] == list(range(6))
    assert all(f.image.dtype == np.uint8 and f.image.shape == (*SIZE, 3) for f in frames)
    assert all(f.decode_ms >= 0 for f in frames)
    assert [f.t_capture for f in frames] == sorted(f.t_capture for f in frames)
    assert "img_02b.jpg" in caplog.text


def test_folder_loop_wraps_and_indexes_keep_growing(image_folder: Path) -> None:
    with FolderSource(image_folder, fps=240, loop=True) as source:
        frames = [source.read() for _ in range(14)]
    assert [level_of(f) for f in frames if f] == [0, 1, 2, 3, 4, 5] * 2 + [0, 1]
    assert [f.index for f in frames if f] == list(range(14))


def test_folder_of_only_corrupt_images_ends_even_when_looping(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "b.png").write_bytes(b"")
    with FolderSource(tmp_path, fps=240, loop=True) as source:
        assert source.read() is None


def test_folder_is_paced_at_fps(image_folder: Path) -> None:
    with FolderSource(image_folder, fps=50) as source:
        frames = drain(source)
    # 6 frames at 50 fps span at least 5 intervals (a lower bound: sleeps never end early
    # by much; the slack covers timer rounding).
    assert frames[-1].t_capture - frames[0].t_capture >= 5 / 50 * 0.8


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_folder_open_errors_name_the_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "cam"
    if kind == "empty":
        path.mkdir()
        (path / "readme.txt").write_text("no images here")
    elif kind == "file":
        path.write_text("not a folder")
    with pytest.raises(CaptureError, match=str(path)):
        FolderSource(path).open()


# --- video file ------------------------------------------------------------------------------


def test_file_frames_in_order_and_end(video_file: Path) -> None:
    with FileSource(video_file, realtime=False) as source:
        frames = drain(source)
        assert source.fps == pytest.approx(100.0)
    assert [level_of(f) for f in frames] == list(range(8))
    assert [f.index for f in frames] == list(range(8))
    assert frames[0].image.shape == (*SIZE, 3)


def test_file_loop(video_file: Path) -> None:
    with FileSource(video_file, loop=True, realtime=False) as source:
        frames = [source.read() for _ in range(20)]
    assert [level_of(f) for f in frames if f] == [*range(8), *range(8), *range(4)]
    assert [f.index for f in frames if f] == list(range(20))


def test_file_realtime_is_paced(video_file: Path) -> None:
    with FileSource(video_file, realtime=True) as source:
        frames = drain(source)
    assert len(frames) == 8
    assert frames[-1].t_capture - frames[0].t_capture >= 7 / 100 * 0.8


def test_file_open_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(CaptureError, match="no such file") as err:
        FileSource(missing).open()
    assert str(missing) in str(err.value)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CaptureError, match=str(junk)):
        FileSource(junk).open()


# --- grabber ---------------------------------------------------------------------------------


def test_grabber_keeps_only_the_newest_frame() -> None:
    source = GatedSource()
    with FrameGrabber(source, reconnect_s=0.01) as grabber:
        assert grabber.latest(timeout=0.05) is None  # nothing captured yet
        assert grabber.last_frame_age() == float("inf")

        source.release(5)  # the consumer is "busy" while five frames arrive
        wait_until(lambda: grabber.frames_read == 5)
        first = grabber.latest(timeout=DEADLINE_S)
        assert first is not None and first.index == 4
        assert grabber.dropped == 4
        # Nothing newer yet: latest() must not hand the same frame out twice.
        assert grabber.latest(timeout=0.05) is None

        source.release(3)
        wait_until(lambda: grabber.frames_read == 8)
        second = grabber.latest(timeout=DEADLINE_S)
        assert second is not None and second.index == 7
        assert grabber.dropped == 6
        assert 0 <= grabber.last_frame_age() < DEADLINE_S
        assert grabber.decode_ms == pytest.approx(1.0)
        assert grabber.connected and grabber.error is None


def test_grabber_latest_blocks_until_a_new_frame() -> None:
    source = GatedSource()
    got: list[Frame | None] = []
    with FrameGrabber(source) as grabber:
        waiter = threading.Thread(target=lambda: got.append(grabber.latest(timeout=DEADLINE_S)))
        waiter.start()
        source.release(1)
        waiter.join(DEADLINE_S)
    assert got and got[0] is not None and got[0].index == 0


def test_grabber_slow_consumer_sees_growing_indexes(image_folder: Path) -> None:
    source = FolderSource(image_folder, fps=240, loop=True)
    seen: list[int] = []
    with FrameGrabber(source) as grabber:
        while len(seen) < 5:
            frame = grabber.latest(timeout=DEADLINE_S)
            assert frame is not None
            seen.append(frame.index)
            # A slow stage: wait until at least two newer frames were captured.
            wait_until(lambda i=frame.index: grabber.frames_read >= i + 3)
        assert grabber.dropped > 0
    assert seen == sorted(set(seen))
    assert all(b - a >= 2 for a, b in itertools.pairwise(seen))


def test_grabber_finite_source_ends(image_folder: Path) -> None:
    grabber = FrameGrabber(FolderSource(image_folder, fps=240)).start()
    wait_until(lambda: not grabber.running)
    assert grabber.ended and grabber.error is None
    assert grabber.frames_read == 6 and grabber.dropped == 5
    last = grabber.latest(timeout=DEADLINE_S)
    assert last is not None and level_of(last) == 5  # the newest frame is kept to the end
    t0 = time.monotonic()
    assert grabber.latest(timeout=DEADLINE_S) is None  # ended: answers at once
    assert time.monotonic() - t0 < DEADLINE_S / 2
    grabber.stop()


def test_grabber_finite_source_that_cannot_open_ends_with_error(tmp_path: Path, caplog) -> None:
    missing = tmp_path / "gone"
    with caplog.at_level(logging.ERROR):
        grabber = FrameGrabber(FolderSource(missing), reconnect_s=0.01).start()
        wait_until(lambda: not grabber.running)
    assert grabber.ended and grabber.reconnects == 0
    assert grabber.error is not None and str(missing) in grabber.error
    assert str(missing) in caplog.text
    assert grabber.latest(timeout=DEADLINE_S) is None
    grabber.stop()


def test_grabber_reconnects_a_dropped_live_source(caplog) -> None:
    camera = FlakyCamera(frames_before_drop=3, failed_reopens=2)
    seen: list[int] = []
    with caplog.at_level(logging.INFO), FrameGrabber(camera, reconnect_s=0.01) as grabber:
        # Frames keep coming after the drop and the two failed reopens.
        wait_until(lambda: camera.opens == 4 and grabber.frames_read >= 6)
        while len(seen) < 3:
            frame = grabber.latest(timeout=DEADLINE_S)
            assert frame is not None
            seen.append(frame.index)
        assert grabber.reconnects == 3  # two failed attempts, one that worked
        assert grabber.connected and grabber.error is None
        # Closed after each failure, before the reopen (a camera allows one handle).
        assert camera.closes == 3
    assert seen == sorted(set(seen)) and seen[-1] >= 3  # indexes continue across the drop
    assert not camera.is_open
    assert "disconnected" in caplog.text
    assert caplog.text.count("reconnect attempt") == 3
    assert "open attempt 2 failed" in caplog.text and "open attempt 3 failed" in caplog.text


def test_grabber_keeps_retrying_a_live_source_that_never_opens(caplog) -> None:
    class DeadCamera(FlakyCamera):
        def open(self) -> None:
            self.opens += 1
            raise CaptureError("dead test camera: no such device")

    camera = DeadCamera()
    with caplog.at_level(logging.WARNING), FrameGrabber(camera, reconnect_s=0.01) as grabber:
        wait_until(lambda: camera.opens >= 3)
        assert grabber.running and not grabber.ended and not grabber.connected
        assert grabber.error is not None and "no such device" in grabber.error
        assert grabber.latest(timeout=0.01) is None
    assert not grabber.running
    assert caplog.text.count("no such device") >= 2


def test_stop_is_idempotent_and_closes_the_source() -> None:
    source = GatedSource()
    grabber = FrameGrabber(source).start()
    wait_until(lambda: source.is_open)
    source.release(1)
    grabber.stop()
    assert not source.is_open and not grabber.running
    grabber.stop()  # again: no error, no change
    assert not source.is_open
    assert grabber.latest(timeout=DEADLINE_S) is not None  # the frame held is still handed over
    assert grabber.latest(timeout=DEADLINE_S) is None  # stopped: answers at once
    with pytest.raises(RuntimeError):
        grabber.start()


def test_stop_before_start_closes_the_source() -> None:
    source = GatedSource()
    source.open()
    FrameGrabber(source).stop()
    assert not source.is_open


def test_stop_interrupts_a_slow_paced_source(image_folder: Path) -> None:
    # At 0.01 fps the second frame is due in 100 s; stop() must not wait for it.
    grabber = FrameGrabber(FolderSource(image_folder, fps=0.01)).start()
    assert grabber.latest(timeout=DEADLINE_S) is not None
    t0 = time.monotonic()
    grabber.stop(timeout=DEADLINE_S)
    assert time.monotonic() - t0 < DEADLINE_S / 2
    assert not grabber.running


# --- live sources without hardware, masking, factory ------------------------------------------


def test_url_password_is_masked() -> None:
    source = UrlSource("rtsp://admin:s3cr3t@192.168.1.20:554/stream1")
    assert source.describe() == "url rtsp://admin:***@192.168.1.20:554/stream1"
    assert "s3cr3t" not in repr(source)
    # An unescaped '@' in the password must not leak its tail.
    assert "ss" not in mask_secrets("rtsp://u:p@ss@cam/x").split("@")[-2]
    assert mask_secrets("http://cam/mjpg?user=a&password=hunter2") == (
        "http://cam/mjpg?user=a&password=***"
    )
    assert mask_secrets("rtsp://cam.local/live") == "rtsp://cam.local/live"


def test_url_open_failure_names_the_stream_without_the_password() -> None:
    # Port 1 on localhost refuses at once: no network or camera needed.
    source = UrlSource("http://viewer:hunter2@127.0.0.1:1/video", open_timeout_s=2)
    with pytest.raises(CaptureError) as err:
        source.open()
    assert "127.0.0.1:1" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(CaptureError, match="unsupported scheme"):
        UrlSource("ftp://cam/x").open()


def test_v4l2_missing_device_names_it(tmp_path: Path) -> None:
    device = str(tmp_path / "video99")
    source = V4L2Source(device)
    assert source.live
    with pytest.raises(CaptureError, match="video99"):
        source.open()
    assert V4L2Source("2").device == 2  # an index given as text


def test_gstreamer_without_support_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(gstreamer_mod, "opencv_has_gstreamer", lambda: False)
    source = GStreamerSource("rtspsrc location=rtsp://u:pw@cam/x ! decodebin ! appsink")
    with pytest.raises(CaptureError, match="without GStreamer") as err:
        source.open()
    assert "pw@" not in str(err.value)
    other = GStreamerSource("rtspsrc location=rtsp://cam/x user-id=admin user-pw=hunter2 ! appsink")
    assert "hunter2" not in other.describe() and "user-pw=***" in other.describe()


def test_make_source_picks_the_class_by_type(tmp_path: Path, video_file: Path) -> None:
    base = tmp_path
    resolve = lambda p: p if p.is_absolute() else base / p  # noqa: E731 (Config.resolve's role)
    assert set(SOURCES) == {"v4l2", "gstreamer", "url", "file", "folder"}

    folder = make_source(FolderCamera(path=Path("images"), fps=12, loop=True), resolve)
    assert isinstance(folder, FolderSource)
    assert folder.path == tmp_path / "images" and folder.fps == 12 and folder.loop

    file = make_source(FileCamera(path=video_file, realtime=False), resolve)
    assert isinstance(file, FileSource) and file.path == video_file and not file.realtime

    cam = make_source(V4L2Camera(device="/dev/video0", width=640, height=480, fps=15))
    assert isinstance(cam, V4L2Source) and (cam.width, cam.height, cam.fps) == (640, 480, 15)

    url = make_source(UrlCamera(url="rtsp://a:b@cam/live"))
    assert isinstance(url, UrlSource) and "a:***@" in url.describe()

    grabber = make_grabber(FileCamera(path=video_file, reconnect_s=7.0))
    assert grabber.reconnect_s == 7.0

    with pytest.raises(CaptureError, match="unknown camera type"):
        make_source(SimpleNamespace(type="carrier-pigeon"))  # type: ignore[arg-type]


def test_grabber_over_a_configured_file(video_file: Path) -> None:
    grabber = make_grabber(FileCamera(path=video_file, realtime=False))
    with grabber:
        wait_until(lambda: grabber.ended)
    assert grabber.frames_read == 8
    stats = grabber.stats()
    assert stats.ended and stats.frames_read == 8 and stats.decode_ms is not None
    assert stats.source == f"file {video_file}"
