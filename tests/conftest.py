"""Shared fixtures: the real data beside the repository (skipped when absent), a maker of
small generated images, and a PNG that claims a huge size (decompression bomb)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The stages' process-wide settings (stages/__init__.py), before any test imports torch.
import stages  # noqa: E402,F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` (real MediaEval, CrisisMMD and crisis4 files), or skip."""
    if not (SHARED_DATA / "crisis4" / "crisis4.csv").is_file():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    """make_image(relative_path, size=(32, 24), mode="RGB", color=..., format=None,
    noise=False) -> path, a generated picture saved under tmp_path (format from the suffix
    unless given). noise=True draws seeded random pixels instead of one colour: plain pictures
    all share one perceptual hash, so they count as near-duplicates of each other."""

    def make(
        relative: str,
        size: tuple[int, int] = (32, 24),
        mode: str = "RGB",
        color: object = None,
        format: str | None = None,
        noise: bool = False,
        **save: object,
    ) -> Path:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if noise:
            rng = np.random.default_rng(zlib.crc32(relative.encode()))
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").convert(mode).save(path, format=format, **save)
            return path
        if color is None:
            # Colour from the name, so different files have different content hashes.
            crc = zlib.crc32(relative.encode())
            color = {
                "RGB": tuple(crc >> s & 255 for s in (0, 8, 16)),
                "RGBA": (10, 200, 30, 255),
                "L": crc & 255,
            }.get(mode, 0)
        Image.new(mode, size, color).save(path, format=format, **save)
        return path

    return make


@pytest.fixture
def png_claiming() -> Callable[[int, int], bytes]:
    """png_claiming(width, height) -> bytes of a PNG whose header claims that size while only
    a 1x1 picture follows: enough for Pillow's bomb check, without a huge image in memory."""

    def make(width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (1, 1)).save(buffer, format="PNG")
        data = bytearray(buffer.getvalue())
        ihdr = 8 + 8  # PNG signature, then the IHDR chunk's length and type
        data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
        crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
        data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
        return bytes(data)

    return make
