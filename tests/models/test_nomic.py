"""Nomic Embed Multimodal 3B's wrapper against colpali-engine itself (tiny Qwen2.5-VL config, see
tests/models/qwen_vl.py). Reference: the model card's use, `BiQwen2_5.from_pretrained` +
`BiQwen2_5_Processor.from_pretrained`, `processor.process_images(images)`, `model(**batch)`: one
L2-normalised vector per image, the last token of the left-padded sequence.

colpali-engine 0.3.18's BiQwen2_5.from_pretrained fails on transformers 5.24 unless it is handed a
key_mapping (it reads an attribute transformers removed); the reference passes the same mapping the
backend does (services.embedder.backends.nomic.checkpoint_key_mapping), and a test below pins
that the call without it still fails, so the workaround is dropped once colpali-engine is fixed.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from services.embedder.backends.nomic import checkpoint_key_mapping
from services.embedder.backends.registry import load_backend
from tests.models.parity import check_and_record, cosines, embed_over_grpc, load_photo, photo_paths
from tests.models.qwen_vl import add_lora_adapter, build_biqwen2_5


def reference_vectors(directory, paths, *, dtype=None, resample=None) -> np.ndarray:
    import torch
    from colpali_engine.models import BiQwen2_5, BiQwen2_5_Processor

    model = BiQwen2_5.from_pretrained(
        str(directory), local_files_only=True, key_mapping=checkpoint_key_mapping()
    )
    model = model.eval() if dtype is None else copy.deepcopy(model).to(dtype).eval()
    processor = BiQwen2_5_Processor.from_pretrained(str(directory), local_files_only=True)
    if resample is not None:
        processor.image_processor.resample = resample
    batch = processor.process_images([load_photo(p) for p in paths])
    with torch.inference_mode():
        return model(**batch).float().numpy()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("biqwen2_5")
    build_biqwen2_5(directory)
    return directory


def test_nomic_matches_colpali_engine(base_dir):
    import torch

    paths = photo_paths()
    reference = reference_vectors(base_dir, paths)
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    served, info = embed_over_grpc(
        load_backend("nomic-embed-multimodal-3b", weights=base_dir, threads=2), paths
    )
    assert info.normalized and info.dim == 64 and info.backend == "colpali-engine"
    check_and_record(
        "nomic-embed-multimodal-3b",
        reference=reference,
        served=served,
        bf16=reference_vectors(base_dir, paths, dtype=torch.bfloat16),
        slipped=reference_vectors(base_dir, paths, resample=2),
        slip_what="bilinear for bicubic",
        architecture="Qwen2.5-VL layer types, tiny widths (vision 2 x 32, text 2 x 64)",
    )


def test_nomic_lora_adapter_layout_matches_colpali_engine(base_dir, tmp_path):
    """The published checkpoint is a LoRA adapter naming its base model: loaded through the
    adapter, the backend gives the reference's vectors, and they are not the base model's."""
    paths = photo_paths()[:2]
    adapter_dir = tmp_path / "adapter"
    add_lora_adapter(base_dir, adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "config.json").exists()
    reference = reference_vectors(adapter_dir, paths)
    assert cosines(reference, reference_vectors(base_dir, paths)).max() < 0.9999, (
        "the adapter changed nothing"
    )
    backend = load_backend("nomic-embed-multimodal-3b", weights=adapter_dir, threads=2)
    served, info = embed_over_grpc(backend, paths)
    assert info.details["base_model"] == str(base_dir)
    assert cosines(reference, served).min() >= 0.9999


def test_colpali_engine_still_needs_the_key_mapping_workaround(base_dir):
    """Fails (and should then be deleted with checkpoint_key_mapping) once colpali-engine's
    BiQwen2_5.from_pretrained works on this transformers without a key_mapping."""
    from colpali_engine.models import BiQwen2_5

    with pytest.raises(AttributeError, match="_checkpoint_conversion_mapping"):
        BiQwen2_5.from_pretrained(str(base_dir), local_files_only=True)
