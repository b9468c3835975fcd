"""ILIAS's official feature extraction (ilias-vrg/ilias, feature_extraction/src/datasets/transforms.py,
the default RESIZE_LARGE transform: LargeSideResize(resolution) -> ToTensor -> Normalize), restated
here with torchvision as the official code builds it, against vsbench's preprocessing as data
(`resize: longer`) on the shipped real photos, at both of DINOv3's ILIAS resolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.embedder.backends.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "services" / "evaluator" / "quickstart" / "photos").glob("*.jpg"))


class OfficialLargeSideResize:
    """The official class's arithmetic and call, restated (PIL's default resample)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        ar = float(height) / float(width)
        new_h = max(1, int(self.size * ar) if ar <= 1 else self.size)
        new_w = max(1, int(self.size / ar) if ar > 1 else self.size)
        return img.resize((new_w, new_h))


@pytest.mark.parametrize("resolution", [224, 768])
def test_longer_side_preprocessing_equals_the_official_ilias_transform(resolution):
    import torchvision.transforms as T

    official = T.Compose([
        OfficialLargeSideResize(resolution), T.ToTensor(), T.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])
    ours = Preprocessing(resize="longer", resize_to=resolution)
    assert len(PHOTOS) > 20
    worst = 0.0
    for path in PHOTOS:
        with Image.open(path) as image:
            image = image.convert("RGB")
            expected = official(image).numpy()
            got = ours(image)
        assert got.shape == expected.shape, path.name
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst < 1e-5
