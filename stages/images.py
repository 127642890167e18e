"""Opening post images safely: the same functions serve the prepare stage and prediction.

`load_image(image_path, root, max_side)` resolves a path under its root (refusing anything
that escapes it), fully decodes it with Pillow and returns a normalised RGB image, or `None`
with the kind of problem; the caller then uses `white_image(size)` and records the repair.
Pillow's decompression-bomb guard stays on, and its warning level is treated as an error.
Only errors that say the file's content is not a usable image become a problem kind; anything
else (out of memory, an unreadable disk, a bug) raises ImageDecodeError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Problems that turn a row's image into the white dummy (each is a recorded repair).
PROBLEMS = (
    "no_path",
    "path_invalid",
    "path_escape",
    "missing",
    "empty",
    "not_image",
    "truncated",
    "bomb",
    "corrupt",
)
_ORIENTATION = 0x0112  # EXIF tag
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "GIF": {".gif"},
    "WEBP": {".webp"},
    "BMP": {".bmp"},
    "TIFF": {".tif", ".tiff"},
}


# What Pillow raises on malformed data besides its own UnidentifiedImageError and
# DecompressionBomb*: SyntaxError, EOFError, struct.error and zlib.error from parsing, ValueError
# from headers (PPM) and tiles, and OSError from decoders ("image file is truncated", "broken
# data stream"). Its format plugins also use TypeError, IndexError and KeyError for bad data
# (Image.open reads them as "not this format"; a TIFF whose second frame has no size raises
# TypeError when the frames are counted). Each counts only when raised in Pillow's code (the
# last three only in a plugin), and an OSError only without an errno: the operating system
# sets one (permissions, I/O errors), Pillow's decoders do not.
_MALFORMED = (SyntaxError, ValueError, EOFError, struct.error, zlib.error, OSError)
_MALFORMED_IN_PLUGIN = (TypeError, IndexError, KeyError)
_PILLOW = Path(Image.__file__).parent


class ImageDecodeError(RuntimeError):
    """Opening an image failed for a reason other than its content: prepare and predict stop,
    naming the file, instead of recording a repair and using the white dummy."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {type(cause).__name__}: {cause}")
        self.path = path


def _malformed(exc: BaseException) -> bool:
    """Whether `exc` says that the file's bytes are not a usable image (see _MALFORMED)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = Path(tb.tb_frame.f_code.co_filename) if tb is not None else Path()
    if not where.is_relative_to(_PILLOW):
        return False
    return isinstance(exc, _MALFORMED) or (
        isinstance(exc, _MALFORMED_IN_PLUGIN) and where.name.endswith("ImagePlugin.py")
    )


class ImagePathError(ValueError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image | None  # RGB, longest side <= max_side; None when unusable
    problem: str | None = None  # one of PROBLEMS when image is None
    detail: str = ""  # human-readable cause, for logs
    notes: tuple[str, ...] = ()  # normalisations applied (first_frame, mode_CMYK, ...)


def resolve_image_path(image_path: str, root: Path) -> Path:
    """The file `image_path` names under `root`; ImagePathError if it is empty, absolute,
    or resolves (through `..` or symlinks) to a place outside `root`."""
    if not image_path or not image_path.strip():
        raise ImagePathError("no_path", "no image path given")
    if "\x00" in image_path:
        raise ImagePathError("path_invalid", "image path contains a NUL character")
    relative = Path(image_path)
    if relative.is_absolute() or relative.drive:
        raise ImagePathError("path_escape", f"absolute image path {image_path!r}")
    base = Path(root).resolve()
    try:
        target = (base / relative).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, names too long
        raise ImagePathError("path_invalid", f"{image_path!r}: {exc}") from exc
    if not target.is_relative_to(base):
        raise ImagePathError("path_escape", f"{image_path!r} resolves outside {base}")
    return target


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    notes = [] if im.mode == "RGB" else [f"mode_{im.mode}"]
    if im.mode in _WIDE_MODES:
        # 16-bit and float images: convert("L") would clip everything above 255 to white.
        values = np.asarray(im, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if top > 255:
            values = values * (255.0 / (65535.0 if top <= 65535 else top))
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Transparent areas go on white, not on the black that a plain convert gives.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas, notes
    return (im if im.mode == "RGB" else im.convert("RGB")), notes


def _decode(path: Path, max_side: int) -> LoadedImage:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            notes = []
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
                notes.append("first_frame")
            if im.format in _EXTENSIONS and path.suffix.lower() not in _EXTENSIONS[im.format]:
                notes.append("format_mismatch")
            if im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))  # decode at reduced scale: much faster
            im.load()
            try:
                orientation = im.getexif().get(_ORIENTATION, 1)
            except Exception as exc:  # a broken EXIF block should not cost us a good picture
                if not _malformed(exc):
                    raise
                orientation = 1
                notes.append("exif_unreadable")
            upright = im
            if orientation in range(2, 9):
                upright = ImageOps.exif_transpose(im)
                notes.append("exif_rotated")
            rgb, mode_notes = _to_rgb(upright)
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        notes.append("downscaled")
    return LoadedImage(rgb, notes=tuple(notes + mode_notes))


def open_image(path: Path, max_side: int) -> LoadedImage:
    """Decode an already resolved file. A missing, empty or malformed file becomes a problem
    kind; any other failure raises ImageDecodeError naming the file."""
    try:
        if not path.is_file():
            return LoadedImage(None, "missing", f"{path}: no such file")
        if path.stat().st_size == 0:
            return LoadedImage(None, "empty", f"{path}: zero bytes")
        return _decode(path, max_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return LoadedImage(None, "bomb", f"{path}: {exc}")
    except UnidentifiedImageError as exc:
        return LoadedImage(None, "not_image", f"{path}: {exc}")
    except Exception as exc:
        if not _malformed(exc):
            raise ImageDecodeError(path, exc) from exc
        kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        return LoadedImage(None, kind, f"{path}: {type(exc).__name__}: {exc}")


def load_image(image_path: str, root: Path, max_side: int = 448) -> LoadedImage:
    """Resolve `image_path` under `root` and open it (see module docstring)."""
    try:
        path = resolve_image_path(image_path, root)
    except ImagePathError as exc:
        return LoadedImage(None, exc.kind, str(exc))
    return open_image(path, max_side)


def white_image(size: int) -> Image.Image:
    return Image.new("RGB", (size, size), "white")


def encode_jpeg(image: Image.Image) -> tuple[str, bytes]:
    """JPEG bytes of a normalised image and their SHA-256, which names the file."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest(), data


@dataclass(frozen=True)
class StoredImage:
    digest: str  # content hash = file stem
    problem: str | None  # set when the row gets the white dummy
    detail: str = ""
    notes: tuple[str, ...] = ()


class ImageStore:
    """Decodes each distinct file once and keeps one normalised JPEG per content hash in
    `staging`, from which `export` copies the files a split needs."""

    def __init__(self, staging: Path, max_side: int, dummy_size: int) -> None:
        self.staging, self.max_side = Path(staging), max_side
        self.staging.mkdir(parents=True, exist_ok=True)
        self._by_path: dict[Path, StoredImage] = {}
        self.dummy = self._keep(white_image(dummy_size))
        self.decoded = 0

    def _keep(self, image: Image.Image) -> str:
        digest, data = encode_jpeg(image)
        target = self.staging / f"{digest}.jpg"
        if not target.exists():
            target.write_bytes(data)
        return digest

    def get(self, candidates: Sequence[str], root: Path) -> StoredImage:
        """The first candidate that decodes, or the dummy with the first candidate's problem."""
        first: StoredImage | None = None
        for candidate in candidates or [""]:
            stored = self._one(candidate, root)
            if stored.problem is None:
                return stored
            first = first or stored
        assert first is not None
        return first

    def _one(self, candidate: str, root: Path) -> StoredImage:
        try:
            path = resolve_image_path(candidate, root)
        except ImagePathError as exc:
            return StoredImage(self.dummy, exc.kind, str(exc))
        if path not in self._by_path:
            loaded = open_image(path, self.max_side)
            self.decoded += 1
            if loaded.image is None:
                self._by_path[path] = StoredImage(self.dummy, loaded.problem, loaded.detail)
            else:
                self._by_path[path] = StoredImage(
                    self._keep(loaded.image), None, notes=loaded.notes
                )
        return self._by_path[path]

    def distinct(self) -> dict[Path, StoredImage]:
        return dict(self._by_path)

    def export(self, target: Path, digests: Iterable[str]) -> int:
        """Replace directory `target` with exactly the given images (built aside, then swapped
        in, so a killed run never leaves a half-filled directory in place)."""
        target = Path(target)
        building = target.with_name(f".{target.name}.building")
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
        names = sorted({f"{d}.jpg" for d in digests})
        for name in names:
            try:
                os.link(self.staging / name, building / name)
            except OSError:
                shutil.copyfile(self.staging / name, building / name)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        building.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        return len(names)
