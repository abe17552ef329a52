"""`emif export`: the data set's metadata, loadable as it is (docs/architecture.md#the-gallery).

Loaded with pandas and checked against the rules the Hugging Face `datasets` "imagefolder"
loader applies; the `datasets` library itself (pyarrow, fsspec, …) is too heavy for CI.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pytest

from emif_daemon.dataset.export import COLUMNS, export_dataset
from emif_daemon.share.layout import Layout
from tests.fake_dataset import add_failure, make_dataset
from tests.helpers import run_emif
from tests.real_run import real_run

METADATA_NAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


def load_imagefolder(folder: Path) -> pd.DataFrame:
    """The rows of an imagefolder data set, after checking the loader's rules: one metadata
    format in the folder's tree; `file_name` a relative path to an image inside it; no other
    column named like an image column (`*_file_name(s)`), which the loader would open; and
    every image of the tree in exactly one row."""
    found = sorted(p for p in folder.rglob("metadata.*") if p.name in METADATA_NAMES)
    assert found == [folder / "metadata.jsonl"]
    rows = pd.read_json(found[0], lines=True, dtype=False)
    assert list(rows.columns) == list(COLUMNS)
    for name in rows["file_name"]:
        path = PurePosixPath(name)
        assert not path.is_absolute()
        assert ".." not in path.parts
        assert (folder / path).is_file()
    image_like = [c for c in rows.columns if c.endswith(("file_name", "file_names"))]
    assert image_like == ["file_name"]
    images = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert sorted(rows["file_name"]) == images
    return rows


def sidecar(folder: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((folder / name).with_suffix(".json").read_text())
    return doc


def test_export_of_a_real_run_loads_into_12_rows_matching_the_sidecars(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    run = real_run(tmp_path_factory.getbasetemp())
    result = run_emif("export", "--config", str(run.config))
    assert result.returncode == 0, result.stderr
    assert "12 image(s)" in result.stdout
    top = run.root / "GENERATIONS"
    rows = load_imagefolder(top)
    assert len(rows) == 12
    for r in rows.to_dict("records"):
        meta = sidecar(top, r["file_name"])
        assert (r["prompt"], r["seed"]) == (meta["prompt"], meta["seed"])
        assert r["negative_prompt"] == meta["negative_prompt"]
        assert r["sha256"] == meta["output_sha256"]
        assert (r["nation"], r["category"]) == tuple(r["file_name"].split("/")[:2])
        assert (r["width"], r["height"], r["upscaled_width"], r["upscaled_height"]) == (
            128,
            128,
            256,
            256,
        )
        assert (top / r["upscaled_path"]).is_file()
        folder = run.root / "SEGMENTS" / Path(r["upscaled_path"]).relative_to("../UPSCALED_IMAGES")
        manifest = json.loads((folder.with_suffix("") / "manifest.json").read_text())
        assert r["cutout_areas"] == [s["area"] for s in manifest["segments"]]
        assert all((top / p).is_file() for p in r["cutout_paths"])
        assert r["segment_model"] == manifest["model_type"]
    table = pd.read_csv(run.root / "metadata.csv", keep_default_na=False)
    assert sorted(table["file_name"]) == sorted(f"GENERATIONS/{n}" for n in rows["file_name"])
    card = (top / "README.md").read_text()
    assert "| images | 12 |" in card
    assert "| failed at generate | 1 |" in card
    assert 'load_dataset("imagefolder", data_dir="GENERATIONS"' in card


def test_missing_stages_are_null_or_empty_and_the_card_counts_them(root: Path) -> None:
    make_dataset(root, [("Italy", "family")], 2)
    make_dataset(root, [("Peru", "working")], 1, segment=False)
    make_dataset(root, [("Chad", "family")], 1, upscale=False)
    add_failure(root, "upscale", "Chad/family/Chad_family_1_1.png", "timed out")
    report = export_dataset(Layout(root))
    assert report.rows == 4
    rows = load_imagefolder(root / "GENERATIONS").set_index("file_name")
    chad, peru = (
        rows.loc["Chad/family/Chad_family_1_1.png"],
        rows.loc["Peru/working/Peru_working_1_1.png"],
    )
    assert pd.isna(chad["upscaled_path"])
    assert chad["cutout_paths"] == []
    assert (
        peru["upscaled_path"] == "../UPSCALED_IMAGES/Peru/working/Peru_working_1_1_upscaled_1.png"
    )
    assert pd.isna(peru["segment_model"])
    italy = rows.loc["Italy/family/Italy_family_2_1.png"]
    assert italy["cutout_bboxes"] == [[1, 1, 20, 20], [2, 2, 20, 20], [3, 3, 20, 20]]
    assert italy["model"] == "sd_xl_base_1.0_f16.ckpt"
    table = pd.read_csv(root / "metadata.csv", keep_default_na=False).set_index("file_name")
    assert table.loc["GENERATIONS/Chad/family/Chad_family_1_1.png", "upscaled_path"] == ""
    cuts = table.loc["GENERATIONS/Italy/family/Italy_family_1_1.png", "cutout_paths"]
    assert json.loads(cuts)[0].startswith("SEGMENTS/Italy/family/")
    card = report.card.read_text()
    for line in (
        "| images | 4 |",
        "| upscaled | 3 |",
        "| cut out | 2 |",
        "| failed at upscale | 1 |",
    ):
        assert line in card
    assert "`sd_xl_base_1.0_f16.ckpt` (4 images)" in card
    assert "`4x_ultrasharp_f16.ckpt` (3 images)" in card
    # which recipe files made them: the card says which "Creative Upscale" it was
    assert "- txt2img: `recipes/drawthings-sdxl-txt2img.json` (4 images)" in card
    assert "- upscale pass 1: `recipes/drawthings-upscale-ultrasharp.json` (3 images)" in card


def test_an_export_again_gives_the_same_rows_and_an_empty_root_gives_none(
    root: Path, tmp_path: Path
) -> None:
    make_dataset(root, [("Italy", "family"), ("Japan", "working")], 2)
    first = export_dataset(Layout(root)).jsonl.read_bytes()
    assert export_dataset(Layout(root)).jsonl.read_bytes() == first
    empty = tmp_path / "empty"
    Layout(empty).ensure()
    report = export_dataset(Layout(empty))
    assert report.rows == 0
    assert report.jsonl.read_bytes() == b""
    assert "No image yet." in report.card.read_text()
