"""The gallery's incremental refresh: 10 new images added to a gallery of 2 000.

A data set of 2 000 images (20 nations/categories × 100; each a generation, an upscale and 3
cut-outs) is built into a gallery; then 10 images are added to one group and the gallery is
brought up to date twice: as `emif gallery` does (every group's files looked at) and as the
daemon does after a finished batch (only the groups it touched). Each refresh should make the
new images' thumbnails only (3 per image) and write only the changed page and the overview.
The data set is made once and cached under benchmarks/.cache/.

    python benchmarks/bench_gallery.py [--images 2000] [--new 10]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from common import CACHE, REPO, machine

sys.path.insert(0, str(REPO))

from emif_daemon.dataset.gallery import BuildReport, build_gallery
from emif_daemon.share.layout import Layout
from tests.fake_dataset import add_image

NATIONS, CATEGORIES = 10, ("family", "working")


def dataset(images: int) -> Path:
    """The data set, made once; a fresh copy of it per run, so every run starts alike."""
    source = CACHE / f"gallery-{images}"
    marker = source / ".complete"
    if not marker.exists():
        shutil.rmtree(source, ignore_errors=True)
        per_group = images // (NATIONS * len(CATEGORIES))
        for n in range(NATIONS):
            for category in CATEGORIES:
                for i in range(1, per_group + 1):
                    add_image(source, f"Nation{n:02}", category, i, size=128)
        marker.touch()
    root = CACHE / "runs" / f"gallery-{images}"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source, root, ignore=shutil.ignore_patterns(".complete"))
    return root


def row(name: str, report: BuildReport) -> str:
    return (
        f"| {name} | {report.seconds:.2f} | {report.groups} | {report.thumbnails_made} | "
        f"{report.pages_written} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--new", type=int, default=10)
    args = parser.parse_args()
    root = dataset(args.images)
    layout = Layout(root)
    per_group = args.images // (NATIONS * len(CATEGORIES))
    rows = []

    full = build_gallery(layout)
    rows.append(row(f"full build, {args.images} images", full))
    rows.append(row("again, nothing new", build_gallery(layout)))

    for i in range(per_group + 1, per_group + 1 + args.new):
        add_image(root, "Nation03", "family", i, size=128)
    time.sleep(1.1)  # the overview's build time changes, so it is rewritten as in real use
    everything = build_gallery(layout)
    rows.append(row(f"{args.new} new images, `emif gallery` (every group looked at)", everything))

    for i in range(per_group + 1, per_group + 1 + args.new):
        add_image(root, "Nation07", "working", i, size=128)
    time.sleep(1.1)
    touched = build_gallery(layout, groups=["Nation07/working"])
    rows.append(row(f"{args.new} new images, daemon refresh (the touched group)", touched))

    print(f"machine: {machine()}; images {128}² and {256}², 3 cut-outs each\n")
    print("| build | seconds | groups looked at | thumbnails made | pages written |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    expected = args.new * 3
    ok = (
        everything.thumbnails_made == expected
        and touched.thumbnails_made == expected
        and everything.pages_written == 2
        and touched.pages_written == 2
    )
    ratio = full.seconds / max(everything.seconds, 1e-6)
    print(f"\nincremental refresh: {ratio:.0f}× faster than the full build")
    print("only the new thumbnails and the changed pages: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
