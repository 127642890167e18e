"""Rebuild the offline `dvc plots` page: vendored Vega scripts inlined into plots/template.html.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so it draws nothing
offline. `.dvc/config` points `plots.html_template` at plots/template.html instead, which
carries the three libraries inline: the page then works from whatever directory
`dvc plots show -o <dir>` writes to, where a relative `<script src>` would break.

    python tools/vendor_vega.py            # regenerate plots/template.html from plots/vendor/
    python tools/vendor_vega.py --fetch    # first re-download the pinned packages (npm pack)
    python tools/vendor_vega.py --check    # exit 1 when plots/template.html is out of date
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from stages.files import write_text

log = logging.getLogger("vendor_vega")

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ROOT / "plots"
VENDOR = PLOTS / "vendor"
SOURCE = PLOTS / "template.src.html"
TEMPLATE = PLOTS / "template.html"
MANIFEST = VENDOR / "versions.json"

# dvc-render 1.0.2 writes Vega-Lite v5 specs and its page loads vega@5, vega-lite@5 and
# vega-embed@6; these are the newest releases of those majors (vega-embed 6 wants vega ^5).
PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
MARKER = re.compile(r"<!-- vendor: (?P<name>[a-z-]+) -->")
# Strings dvc-render substitutes in the page; none may appear inside the inlined code.
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
# Sequences that would end or confuse an inline <script> element.
UNSAFE_IN_SCRIPT = re.compile(r"</script|<!--|<script", re.IGNORECASE)


def publish(target: Path, text: str) -> None:
    """Write `target` atomically, readable by all (the temporary file starts private)."""
    write_text(target, text)
    target.chmod(0o644)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(vendor: Path = VENDOR) -> None:
    """Download the pinned packages with `npm pack` (which checks the registry's integrity
    hash) and copy their minified UMD builds and licences into `vendor`."""
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed for --fetch (the registry client verifies the tarballs)")
    vendor.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, version in PACKAGES.items():
            proc = subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", str(tmp)],
                capture_output=True,
                text=True,
                check=True,
            )
            (info,) = json.loads(proc.stdout)
            with tarfile.open(tmp / info["filename"]) as tar:
                tar.extractall(tmp / name, filter="data")
            package = tmp / name / "package"
            build = (package / "build" / f"{name}.min.js").read_text(encoding="utf-8")
            publish(vendor / f"{name}.min.js", build)
            licence = vendor / f"LICENSE.{name}"
            if (package / "LICENSE").is_file():
                publish(licence, (package / "LICENSE").read_text(encoding="utf-8"))
            elif not licence.is_file():
                # The vega tarball ships no LICENSE file; its text is in the vega/vega repository.
                raise SystemExit(f"{name}@{version} ships no LICENSE: add {licence} by hand")
            declared = json.loads((package / "package.json").read_text(encoding="utf-8"))["license"]
            manifest[name] = {
                "version": version,
                "file": f"{name}.min.js",
                "sha256": sha256(vendor / f"{name}.min.js"),
                "npm_integrity": info["integrity"],
                "license": declared,
                "license_file": licence.name,
            }
            log.info("fetched %s@%s (%s)", name, version, declared)
    publish(vendor / MANIFEST.name, json.dumps(manifest, indent=2) + "\n")


def inline_script(name: str, vendor: Path = VENDOR) -> str:
    """The vendored library `name` as an inline <script>, after checking it against the manifest."""
    entry = json.loads((vendor / MANIFEST.name).read_text(encoding="utf-8"))[name]
    path = vendor / entry["file"]
    if sha256(path) != entry["sha256"]:
        raise SystemExit(f"{path} does not match the sha256 in {MANIFEST.name}: rerun with --fetch")
    code = path.read_text(encoding="utf-8").rstrip()
    if unsafe := UNSAFE_IN_SCRIPT.search(code):
        raise SystemExit(f"{path} contains {unsafe.group(0)!r}: cannot inline it")
    if any(p in code for p in DVC_PLACEHOLDERS):
        raise SystemExit(f"{path} contains a dvc-render placeholder: dvc would rewrite the code")
    licence = f"plots/vendor/{entry['license_file']}"
    header = f"/* {name}@{entry['version']}, {entry['license']}, see {licence} */"
    return f"<script>{header}\n{code}\n</script>"


def build(source: Path = SOURCE, vendor: Path = VENDOR) -> str:
    """The page template: `source` with each `<!-- vendor: NAME -->` replaced by that library."""
    page = source.read_text(encoding="utf-8")
    if page.count("{plot_divs}") != 1:
        raise SystemExit(f"{source} must contain {{plot_divs}} exactly once (dvc-render fills it)")
    if "{scripts}" in page:
        # dvc-render fills {scripts} with its CDN <script src> tags: the page must not ask for them.
        raise SystemExit(f"{source} must not contain {{scripts}}")
    names = MARKER.findall(page)
    if sorted(names) != sorted(PACKAGES):
        raise SystemExit(f"{source} must inline exactly {sorted(PACKAGES)}, found {names}")
    doctype, _, rest = page.partition("\n")
    generated = (
        "<!-- Generated by tools/vendor_vega.py from plots/template.src.html: edit that. -->"
    )
    return f"{doctype}\n{generated}\n" + MARKER.sub(
        lambda m: inline_script(m["name"], vendor), rest
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetch", action="store_true", help="re-download the pinned packages")
    parser.add_argument("--check", action="store_true", help="fail if plots/template.html is stale")
    args = parser.parse_args()
    if args.fetch:
        fetch()
    page = build()
    if args.check:
        if not TEMPLATE.is_file() or TEMPLATE.read_text(encoding="utf-8") != page:
            log.error("%s is out of date: run python tools/vendor_vega.py", TEMPLATE)
            sys.exit(1)
        log.info("%s is up to date", TEMPLATE)
        return
    publish(TEMPLATE, page)
    log.info("wrote %s (%d kB)", TEMPLATE, TEMPLATE.stat().st_size // 1024)


if __name__ == "__main__":
    main()
