"""Write the project's small real sample, `dataset/raw/`, from the shared data folder.

Run once by a developer who has the shared data (`../shared/data` beside the repository):

    python tools/make_sample.py            # --shared PATH to point elsewhere

It writes, replacing what was there:
- `crisis4_sample.csv`: about `--per-class` crisis4 posts per class, each the source's own
  line byte for byte (the prepare stage does the cleaning, so the sample keeps the dirt);
- `images/<image_path>`: the images those posts name, under the same relative path;
- `images_manifest.csv`: per image, what was done to it (copied, or downscaled) and the
  SHA-256 of the original, so every byte traces back to the shared copy;
- `crisismmd_sample.tsv`: real CrisisMMD rows, header and lines byte for byte.

Selection is seeded, so the same shared data and options give the same sample.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import io
import random
import re
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CRISIS4 = Path("crisis4/crisis4.csv")
CRISISMMD_SPLITS = ("train", "dev", "test")
CRISISMMD_FILE = "crisismmd/task_humanitarian_text_img_agreed_lab_{}.tsv"
URGENT_LABELS = ("affected_individuals", "injured_or_dead_people", "missing_or_found_people")
# CrisisMMD rows per (fine) label group: the urgent ones top crisis4's 56 urgent_help posts up
# to ~100; the others add real relief_info / irrelevant rows whose images are all missing.
CRISISMMD_PLAN: dict[tuple[str, ...], int] = {
    URGENT_LABELS: 44,
    ("rescue_volunteering_or_donation_effort",): 10,
    ("other_relevant_information",): 10,
    ("infrastructure_and_utility_damage",): 10,
    ("not_humanitarian",): 10,
}
# Windows-1252 and Mac-Roman mojibake of UTF-8 punctuation, and HTML entities.
QUIRK = re.compile(r"â€|‚Ä|Ã|Â|&(?:amp|gt|lt|quot|#\d+);")
LINE_END = "\r\n"  # both sources end every line, the last included, with CRLF


@dataclass(frozen=True)
class Line:
    """One physical source line and its parsed fields (no source field holds a line break)."""

    raw: str
    fields: dict[str, str]


def read_lines(path: Path, delimiter: str, quoting: int) -> tuple[str, list[Line]]:
    text = path.read_bytes().decode("utf-8")  # read_text would turn CRLF into LF
    if not text.endswith(LINE_END):
        raise ValueError(f"{path}: expected CRLF line ends, last line included")
    raws = text[: -len(LINE_END)].split(LINE_END)
    header = next(csv.reader([raws[0]], delimiter=delimiter, quoting=quoting))
    lines = []
    for lineno, raw in enumerate(raws[1:], start=2):
        fields = next(csv.reader([raw], delimiter=delimiter, quoting=quoting))
        if len(fields) != len(header):
            raise ValueError(f"{path}:{lineno}: {len(fields)} fields, header has {len(header)}")
        lines.append(Line(raw, dict(zip(header, fields))))
    return raws[0], lines


def text_key(text: str) -> str:
    """Retweets and copies of one text share a key (as crisis4's own grouping does)."""
    t = html.unescape(text.replace("\\n", " ").replace('\\"', '"')).lower()
    t = re.sub(r'^(?:\s*"?(?:rt|mt)?\s*@\w+:?\s*)+', "", t)
    t = re.sub(r"https?://\S+|\S+\.(?:co|ly|com)/\S*|@\w+", " ", t)
    return re.sub(r"\W+", " ", t).strip()


def odd_image(path: Path) -> bool:
    """The decoder cases the sample must exercise: a format its name hides, alpha, animation."""
    with Image.open(path) as im:
        ext_format = {".jpg": "JPEG", ".png": "PNG"}.get(path.suffix)
        return im.format != ext_format or im.mode != "RGB" or getattr(im, "is_animated", False)


def pick_crisis4(
    lines: list[Line], per_class: int, rng: random.Random, odd: set[str], heavy: set[str]
) -> list[Line]:
    """Round-robin over images, one post per image per round, so a class gets as many distinct
    images as it has (up to per_class); within an image, posts with a text not yet taken first.
    Image order: odd images first; heavy ones (big even after downscaling) last; among the
    rest, images another class already uses first. The last two keep the sample's bytes down
    without costing any class a distinct image (each class has more images than it needs)."""
    by_class: dict[str, list[Line]] = defaultdict(list)
    for line in lines:
        by_class[line.fields["label"]].append(line)
    chosen: list[Line] = []
    used_images: set[str] = set()
    # smallest class first, so the larger ones can reuse its images
    for label in sorted(by_class, key=lambda c: (len(by_class[c]), c)):
        by_image: dict[str, list[Line]] = defaultdict(list)
        for line in by_class[label]:
            by_image[line.fields["image_path"]].append(line)
        images = sorted(by_image)
        rng.shuffle(images)
        images.sort(key=lambda p: (p not in odd, p in heavy, p not in used_images))
        for posts in by_image.values():
            rng.shuffle(posts)
        taken: list[Line] = []
        seen_texts: set[str] = set()
        want = min(per_class, len(by_class[label]))
        while len(taken) < want:
            any_fresh = any(
                text_key(x.fields["text"]) not in seen_texts for p in images for x in by_image[p]
            )
            for image in images:
                posts = by_image[image]
                post = next(
                    (x for x in posts if text_key(x.fields["text"]) not in seen_texts),
                    None if any_fresh else next(iter(posts), None),
                )
                if post is None:
                    continue
                posts.remove(post)
                taken.append(post)
                seen_texts.add(text_key(post.fields["text"]))
                if len(taken) == per_class:
                    break
        chosen += taken
        used_images |= {x.fields["image_path"] for x in taken}
    order = {id(line): i for i, line in enumerate(lines)}
    return sorted(chosen, key=lambda line: order[id(line)])


def pick_crisismmd(lines: list[Line], rng: random.Random) -> list[Line]:
    """Per label group: a few rows with mojibake or HTML entities first (prepare must repair
    them), then the rest round-robin over the group's fine labels; one row per tweet and text."""
    chosen: list[Line] = []
    for labels, n in CRISISMMD_PLAN.items():
        pools = {lab: [x for x in lines if x.fields["label"] == lab] for lab in labels}
        for pool in pools.values():
            rng.shuffle(pool)
        quirky = [
            x for pool in pools.values() for x in pool if QUIRK.search(x.fields["tweet_text"])
        ]
        rng.shuffle(quirky)
        ordered = quirky[: max(1, n // 4)]
        longest = max(len(pool) for pool in pools.values())
        ordered += [pool[i] for i in range(longest) for pool in pools.values() if i < len(pool)]
        tweets: set[str] = set()
        texts: set[str] = set()
        taken = 0
        for line in ordered:
            key = text_key(line.fields["tweet_text"])
            if taken == n or line.fields["tweet_id"] in tweets or key in texts:
                continue
            chosen.append(line)
            tweets.add(line.fields["tweet_id"])
            texts.add(key)
            taken += 1
        if taken < n:
            raise ValueError(f"CrisisMMD: only {taken} distinct rows for {labels}, wanted {n}")
    order = {id(line): i for i, line in enumerate(lines)}
    return sorted(chosen, key=lambda line: order[id(line)])


def sample_image(path: Path, max_side: int, quality: int) -> tuple[bytes, str]:
    """The original bytes when the image fits in max_side; else a downscaled copy saved in
    the original's own format and mode (a PNG named .jpg stays PNG data, RGBA stays RGBA).
    Animated images keep their original bytes: re-encoding would drop frames."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side or getattr(im, "is_animated", False):
            return data, "copied"
        fmt, info = im.format, im.info
        im.load()
        small = im.copy()
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    extra = {k: info[k] for k in ("icc_profile", "exif", "dpi") if k in info}
    if fmt == "JPEG":
        small.save(
            out,
            "JPEG",
            quality=quality,
            optimize=True,
            progressive=bool(info.get("progressive")),
            **extra,
        )
    elif fmt == "PNG":
        small.save(out, "PNG", optimize=True, **extra)
    else:
        raise ValueError(f"{path}: no downscale rule for {fmt} images")
    return out.getvalue(), "downscaled"


def write_text(path: Path, header: str, lines: list[Line]) -> None:
    path.write_text(
        LINE_END.join([header] + [x.raw for x in lines]) + LINE_END, encoding="utf-8", newline=""
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "dataset" / "raw")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--max-side", type=int, default=640)
    ap.add_argument("--jpeg-quality", type=int, default=85)
    ap.add_argument(
        "--heavy-bytes",
        type=int,
        default=80_000,
        help="images still bigger than this after downscaling are picked last",
    )
    ap.add_argument("--max-bytes", type=int, default=15_000_000)
    args = ap.parse_args(argv)
    if not (args.shared / CRISIS4).is_file():
        sys.exit(f"{args.shared / CRISIS4}: not found (pass --shared)")

    c4_header, c4_lines = read_lines(args.shared / CRISIS4, ",", csv.QUOTE_MINIMAL)
    c4_images = sorted({x.fields["image_path"] for x in c4_lines})
    odd = {p for p in c4_images if odd_image(args.shared / p)}
    # every candidate is shrunk up front so the pick can steer clear of the heaviest
    shrunk = {p: sample_image(args.shared / p, args.max_side, args.jpeg_quality) for p in c4_images}
    heavy = {p for p, (data, _) in shrunk.items() if len(data) > args.heavy_bytes}
    c4 = pick_crisis4(c4_lines, args.per_class, random.Random(args.seed), odd, heavy)

    mmd_header, mmd_lines = None, []
    for split in CRISISMMD_SPLITS:
        header, lines = read_lines(args.shared / CRISISMMD_FILE.format(split), "\t", csv.QUOTE_NONE)
        if mmd_header not in (None, header):
            raise ValueError(f"CrisisMMD {split}: header differs from the other splits")
        mmd_header, mmd_lines = header, mmd_lines + lines
    mmd = pick_crisismmd(mmd_lines, random.Random(args.seed))

    images: dict[str, tuple[bytes, str]] = {}
    manifest = [
        [
            "image_path",
            "action",
            "format",
            "mode",
            "original_size",
            "original_bytes",
            "original_sha256",
            "sample_size",
            "sample_bytes",
        ]
    ]
    for rel in sorted({x.fields["image_path"] for x in c4}):
        src = args.shared / rel
        data, action = shrunk[rel]
        images[rel] = (data, action)
        with Image.open(src) as orig, Image.open(io.BytesIO(data)) as new:
            manifest.append(
                [
                    rel,
                    action,
                    orig.format,
                    orig.mode,
                    "x".join(map(str, orig.size)),
                    src.stat().st_size,
                    hashlib.sha256(src.read_bytes()).hexdigest(),
                    "x".join(map(str, new.size)),
                    len(data),
                ]
            )
    total = sum(len(d) for d, _ in images.values())
    if total > args.max_bytes:
        sys.exit(
            f"images alone are {total:,} bytes > --max-bytes {args.max_bytes:,}; "
            "lower --max-side or --jpeg-quality"
        )

    shutil.rmtree(args.out / "images", ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for rel, (data, _) in images.items():
        (args.out / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (args.out / "images" / rel).write_bytes(data)
    write_text(args.out / "crisis4_sample.csv", c4_header, c4)
    write_text(args.out / "crisismmd_sample.tsv", mmd_header, mmd)
    with (args.out / "images_manifest.csv").open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(manifest)

    size = folder_bytes(args.out)
    print(f"crisis4_sample.csv: {len(c4)} posts")
    for label, n in sorted(Counter(x.fields["label"] for x in c4).items()):
        distinct = len({x.fields["image_path"] for x in c4 if x.fields["label"] == label})
        print(f"  {label:16s} {n:4d} posts, {distinct:4d} distinct images")
    actions = Counter(a for _, a in images.values())
    print(
        f"images: {len(images)} files ({dict(actions)}), {total:,} bytes; odd ones: "
        f"{sorted(odd & images.keys())}"
    )
    print(
        f"crisismmd_sample.tsv: {len(mmd)} rows "
        f"{dict(sorted(Counter(x.fields['label'] for x in mmd).items()))}"
    )
    print(f"{args.out}: {size:,} bytes in total")
    if size > args.max_bytes:
        sys.exit(f"{args.out}: {size:,} bytes > --max-bytes {args.max_bytes:,}")


if __name__ == "__main__":
    main()
