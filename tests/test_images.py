"""Opening images: the real odd files of MediaEval, each generated bad case, path escapes,
and the store that decodes each file once and exports exactly the images a split needs."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from stages import images
from stages.images import (
    ImageDecodeError,
    ImagePathError,
    ImageStore,
    encode_jpeg,
    load_image,
    open_image,
    resolve_image_path,
    white_image,
)

DEV_IMAGES = Path("mediaeval/2016/devset/images")


@pytest.mark.parametrize(
    "relative, problem, note",
    [
        ("BostonMarathon/fakes/boston_fake_25.jpg", None, "format_mismatch"),  # PNG named .jpg
        ("BostonMarathon/fakes/boston_fake_10.gif", None, "first_frame"),  # animated, palette
        ("BostonMarathon/fakes/boston_fake_34.png", None, "mode_RGBA"),
        ("BostonMarathon/fakes/boston_fake_26.jpg", None, "downscaled"),  # 1594 x 2722
        ("Hurricane Sandy/fakes/sandy_fake_50.jpeg", None, None),
        ("Syrian_boy/syrian_boy_video.txt", "not_image", None),  # text, not image
    ],
)
def test_real_odd_files(
    shared_data: Path, relative: str, problem: str | None, note: str | None
) -> None:
    loaded = load_image(str(DEV_IMAGES / relative), shared_data, max_side=448)
    assert loaded.problem == problem, loaded.detail
    if problem is None:
        assert loaded.image.mode == "RGB" and max(loaded.image.size) <= 448
    if note:
        assert note in loaded.notes


def test_generated_bad_files(
    tmp_path: Path, make_image: Callable[..., Path], png_claiming: Callable[[int, int], bytes]
) -> None:
    good = make_image("good.jpg", size=(300, 200))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("id\turl\nvideo_1\thttps://example.org/v\n")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (tmp_path / "warning_bomb.png").write_bytes(png_claiming(10000, 10000))
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    noisy = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    noisy.save(tmp_path / "noisy.png")
    data = bytearray((tmp_path / "noisy.png").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)  # damage the pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(data))
    expected = {
        "missing.jpg": "missing",
        "empty.jpg": "empty",
        "text.jpg": "not_image",
        "truncated.jpg": "truncated",
        "bomb.png": "bomb",
        "warning_bomb.png": "bomb",
        "garbage.png": "not_image",
        "corrupt.png": "corrupt",
        "": "no_path",
        "  ": "no_path",
    }
    for name, problem in expected.items():
        loaded = load_image(name, tmp_path)
        assert (loaded.image, loaded.problem) == (None, problem), (name, loaded.detail)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the guard is still on, untouched


@pytest.mark.parametrize(
    "mode, color, note",
    [
        ("RGBA", (0, 0, 0, 0), "mode_RGBA"),  # fully transparent: must come out white
        ("LA", (0, 0), "mode_LA"),
        ("CMYK", (0, 0, 0, 0), "mode_CMYK"),
        ("P", "white", "mode_P"),
        ("I;16", 65535, "mode_I;16"),  # 16-bit white must stay white, not clip
        ("1", 1, "mode_1"),
        ("L", 255, "mode_L"),
    ],
)
def test_modes_become_white_rgb(
    make_image: Callable[..., Path], tmp_path: Path, mode: str, color: object, note: str
) -> None:
    suffix = {"CMYK": ".jpg", "P": ".gif"}.get(mode, ".png")
    if mode == "P":
        path = tmp_path / "m.gif"
        Image.new("RGB", (4, 3), color).convert("P").save(path)
    else:
        path = make_image(f"m{suffix}", size=(4, 3), mode=mode, color=color)
    loaded = load_image(path.name, tmp_path)
    assert loaded.problem is None and loaded.image.mode == "RGB"
    assert note in loaded.notes or (mode == "I;16" and any("I" in n for n in loaded.notes))
    assert all(channel >= 250 for channel in loaded.image.getpixel((1, 1)))


def test_sixteen_bit_mid_grey_is_scaled(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    make_image("grey16.png", size=(2, 2), mode="I;16", color=32768)
    assert load_image("grey16.png", tmp_path).image.getpixel((0, 0)) == (128, 128, 128)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    loaded = load_image("anim.gif", tmp_path)
    assert "first_frame" in loaded.notes
    red, green, blue = loaded.image.getpixel((4, 4))
    assert red > 200 and green < 50 and blue < 50


def test_png_named_jpg_and_tiny_image(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    make_image("png.jpg", format="PNG")
    make_image("tiny.png", size=(1, 1))
    assert "format_mismatch" in load_image("png.jpg", tmp_path).notes
    assert load_image("tiny.png", tmp_path).image.size == (1, 1)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), "white").save(tmp_path / "rot.jpg", exif=exif)
    loaded = load_image("rot.jpg", tmp_path)
    assert loaded.image.size == (20, 40) and "exif_rotated" in loaded.notes


def test_large_image_is_capped(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    make_image("wide.jpg", size=(2000, 500))
    assert load_image("wide.jpg", tmp_path, max_side=448).image.size == (448, 112)


def test_paths_cannot_escape_the_root(tmp_path: Path, make_image: Callable[..., Path]) -> None:
    root = tmp_path / "root"
    outside = make_image("secret.jpg")
    make_image("root/sub dir/ünïcode ñame.jpg")
    (root / "link_out.jpg").symlink_to(outside)
    (root / "link_in.jpg").symlink_to(root / "sub dir" / "ünïcode ñame.jpg")
    for escaping in ("../secret.jpg", "sub dir/../../secret.jpg", str(outside), "link_out.jpg"):
        with pytest.raises(ImagePathError) as caught:
            resolve_image_path(escaping, root)
        assert caught.value.kind == "path_escape"
        assert load_image(escaping, root).problem == "path_escape"
    assert load_image("bad\x00name.jpg", root).problem == "path_invalid"
    for fine in ("sub dir/ünïcode ñame.jpg", "link_in.jpg", "sub dir/../sub dir/ünïcode ñame.jpg"):
        assert load_image(fine, root).problem is None, fine


def test_store_decodes_once_and_exports_exactly(
    tmp_path: Path, make_image: Callable[..., Path]
) -> None:
    make_image("img/a.jpg")
    make_image("img/b.png")
    store = ImageStore(tmp_path / "staging", max_side=64, dummy_size=16)
    root = tmp_path / "img"
    first, again = store.get(["a.jpg"], root), store.get(["a.jpg"], root)
    assert first == again and store.decoded == 1
    fallback = store.get(["missing.jpg", "b.png"], root)  # first usable candidate wins
    assert fallback.problem is None and fallback.digest != first.digest
    dummy = store.get(["missing.jpg"], root)
    assert dummy.problem == "missing" and dummy.digest == store.dummy
    assert store.dummy == encode_jpeg(white_image(16))[0]
    target = tmp_path / "out" / "images_train"
    target.mkdir(parents=True)
    (target / "stale.jpg").write_bytes(b"old")
    assert store.export(target, [first.digest, dummy.digest, first.digest]) == 2
    assert sorted(p.name for p in target.iterdir()) == sorted(
        f"{d}.jpg" for d in (first.digest, dummy.digest)
    )
    assert not list(target.parent.glob(".images_train*"))


def _tiff_with_broken_second_frame() -> bytes:
    """Two frames; the second one's width tag renamed, so counting the frames makes Pillow's
    TIFF plugin raise TypeError("Missing dimensions") (found by mutating files)."""
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (8, 6), colour) for colour in ("red", "blue")]
    frames[0].save(buffer, format="TIFF", save_all=True, append_images=frames[1:])
    data = bytearray(buffer.getvalue())

    def u16(at: int) -> int:
        return struct.unpack_from("<H", data, at)[0]

    first = struct.unpack_from("<I", data, 4)[0]
    second = struct.unpack_from("<I", data, first + 2 + 12 * u16(first))[0]
    for entry in range(second + 2, second + 2 + 12 * u16(second), 12):
        if u16(entry) == 256:  # ImageWidth
            struct.pack_into("<H", data, entry, 0xFFF0)
    return bytes(data)


def test_malformed_data_raised_inside_pillow_is_a_repair(tmp_path: Path) -> None:
    (tmp_path / "frames.tif").write_bytes(_tiff_with_broken_second_frame())
    loaded = load_image("frames.tif", tmp_path)
    assert (loaded.image, loaded.problem) == (None, "corrupt")
    assert "TypeError: Missing dimensions" in loaded.detail


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        TypeError("bad argument"),
        AttributeError("no such attribute"),
        NameError("name 'x' is not defined"),
        AssertionError(),
        KeyError("k"),
        ValueError("raised outside Pillow"),
        PermissionError(13, "Permission denied"),
    ],
)
def test_other_errors_stop_naming_the_file(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make_image: Callable[..., Path],
    error: Exception,
) -> None:
    path = make_image("fine.jpg")
    assert open_image(path, 64).problem is None

    def failing(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(images, "_to_rgb", failing)
    with pytest.raises(ImageDecodeError) as caught:
        open_image(path, 64)
    assert str(path) in str(caught.value) and caught.value.path == path
    assert caught.value.__cause__ is error
    store = ImageStore(tmp_path / "staging", max_side=64, dummy_size=16)
    with pytest.raises(ImageDecodeError):  # the store does not swallow it either
        store.get(["fine.jpg"], tmp_path)


def test_memory_error_inside_pillow_stops(
    monkeypatch: pytest.MonkeyPatch, make_image: Callable[..., Path]
) -> None:
    path = make_image("big.png")

    def out_of_memory(self: ImageFile.ImageFile) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(ImageDecodeError, match="big.png: MemoryError"):
        open_image(path, 64)


def test_os_errors_with_an_errno_stop(
    monkeypatch: pytest.MonkeyPatch, make_image: Callable[..., Path]
) -> None:
    path = make_image("locked.jpg")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(ImageDecodeError, match="PermissionError"):
        open_image(path, 64)
