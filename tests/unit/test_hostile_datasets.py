"""Issue 11 item 7: a dataset's rows cannot make the evaluator read (and send to a vendor) files
outside the dataset root: file:// URLs, a sidecar root elsewhere, symlinks out of the tree.
Each probe reads a stand-in "secret" in the test's temporary folder, never a real system file."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.evaluator.datasets.base import DatasetError, OutsideRootError
from services.evaluator.datasets.folder import load_folder
from services.evaluator.datasets.manifest import load_manifest
from services.evaluator.datasets.registry import load_dataset

SECRET = b"-----BEGIN PRIVATE KEY----- not an image"
IMAGE = b"\xff\xd8\xff\xe0 pretend jpeg"


@pytest.fixture()
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """(dataset folder with one real image, a secret file next to it outside the dataset)."""
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "good.jpg").write_bytes(IMAGE)
    secret = tmp_path / "private" / "id_rsa"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return dataset, secret


def manifest(folder: Path, *rows: tuple[str, str]) -> Path:
    lines = ["image_id,location,product_id,split"] + [f"{i},{loc},p,gallery" for i, loc in rows]
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def records(dataset):
    return {r.image_id: r for r in dataset.records}


def test_file_url_outside_the_root_is_refused_per_image(layout):
    folder, secret = layout
    dataset = load_manifest(manifest(folder, ("good", "good.jpg"), ("leak", secret.as_uri())))
    by_id = records(dataset)
    assert dataset.read(by_id["good"]) == IMAGE
    with pytest.raises(OutsideRootError) as caught:
        dataset.read(by_id["leak"])
    message = str(caught.value)
    assert isinstance(caught.value, OSError)  # reported as that image's READ_ERROR by the pipeline
    assert str(secret) in message and "outside the dataset root" in message
    assert "allow_outside_root: true" in message
    assert dataset.missing() == []  # it exists: refused when read, not silently dropped


def test_file_url_inside_the_root_is_read(layout):
    folder, _ = layout
    dataset = load_manifest(manifest(folder, ("good", (folder / "good.jpg").as_uri())))
    assert dataset.read(dataset.records[0]) == IMAGE


def test_symlink_out_of_the_root_is_refused_and_one_inside_is_followed(layout):
    folder, secret = layout
    (folder / "innocent.jpg").symlink_to(secret)
    (folder / "alias.jpg").symlink_to(folder / "good.jpg")
    dataset = load_manifest(manifest(folder, ("innocent", "innocent.jpg"), ("alias", "alias.jpg")))
    by_id = records(dataset)
    assert dataset.read(by_id["alias"]) == IMAGE
    with pytest.raises(OutsideRootError, match="innocent.jpg resolves to .*id_rsa, outside the dataset root"):
        dataset.read(by_id["innocent"])


def test_symlinked_folder_out_of_a_folder_dataset_is_refused(tmp_path, layout):
    _, secret = layout
    root = tmp_path / "shop"
    (root / "gallery" / "p1").mkdir(parents=True)
    (root / "gallery" / "p1" / "a.jpg").write_bytes(IMAGE)
    outside = tmp_path / "elsewhere" / "p2"
    outside.mkdir(parents=True)
    (outside / "b.jpg").write_bytes(SECRET)
    (root / "gallery" / "p2").symlink_to(outside, target_is_directory=True)
    dataset = load_folder(root)
    by_id = records(dataset)
    assert dataset.read(by_id["gallery/p1/a.jpg"]) == IMAGE
    with pytest.raises(OutsideRootError, match="outside the dataset root"):
        dataset.read(by_id["gallery/p2/b.jpg"])
    allowed = load_folder(root, allow_outside_root=True)
    assert allowed.read(records(allowed)["gallery/p2/b.jpg"]) == SECRET


@pytest.mark.parametrize("root", ["/", "../..", "../private"])
def test_a_sidecar_cannot_move_the_root_away_from_the_manifest(layout, root):
    folder, _ = layout
    path = manifest(folder, ("good", "good.jpg"))
    (folder / "dataset.yaml").write_text(f"root: {root}\n")
    with pytest.raises(DatasetError, match="dataset.yaml: root .* outside the manifest's folder") as caught:
        load_manifest(path)
    assert "dataset option root:" in str(caught.value) and "allow_outside_root: true" in str(caught.value)


def test_a_sidecar_root_below_or_directly_above_the_manifest_is_kept(tmp_path):
    variant = tmp_path / "set" / "closed"
    variant.mkdir(parents=True)
    (tmp_path / "set" / "good.jpg").write_bytes(IMAGE)
    path = manifest(variant, ("good", "good.jpg"))
    (variant / "dataset.yaml").write_text("root: ..\n")  # the quickstart's own layout
    dataset = load_manifest(path)
    assert dataset.read(dataset.records[0]) == IMAGE


def test_a_sidecar_cannot_grant_itself_outside_reads(layout):
    folder, _ = layout
    path = manifest(folder, ("good", "good.jpg"))
    (folder / "dataset.yaml").write_text("allow_outside_root: true\nroot: /\n")
    with pytest.raises(DatasetError, match="allow_outside_root cannot be set by the dataset's own files"):
        load_manifest(path)


def test_the_option_allows_outside_reads_explicitly(layout):
    folder, secret = layout
    path = manifest(folder, ("leak", secret.as_uri()))
    dataset = load_dataset("manifest", path, allow_outside_root=True)
    assert dataset.allow_outside_root and dataset.read(dataset.records[0]) == SECRET
    # Subsets keep the setting (the pipeline drops missing images with `without`).
    assert dataset.without(set()).allow_outside_root


def test_an_explicit_root_option_is_trusted_and_still_confines(layout, tmp_path):
    folder, secret = layout
    meta = tmp_path / "meta"
    meta.mkdir()
    path = manifest(meta, ("good", "good.jpg"), ("leak", secret.as_uri()))
    dataset = load_manifest(path, root=folder)
    by_id = records(dataset)
    assert dataset.read(by_id["good"]) == IMAGE
    with pytest.raises(OutsideRootError):
        dataset.read(by_id["leak"])
