"""open_clip embedder: spec parsing, ids, clear load errors, and a real (random) small model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vmtr.models.embed import (
    DEFAULT_EMBEDDER,
    Embedder,
    EmbedderError,
    OpenClipEmbedder,
    load_embedder,
    parse_spec,
)

SMALL = "ViT-S-32"  # open_clip's smallest ViT config; at 64 px it is 4 patches per image


def test_parse_spec_forms(tmp_path: Path) -> None:
    assert parse_spec(DEFAULT_EMBEDDER).pretrained == "laion2b_s34b_b79k"
    assert parse_spec("ViT-B-32") == parse_spec(DEFAULT_EMBEDDER)  # the default tag
    random = parse_spec("ViT-B-32:none")
    assert random.random_weights and random.pretrained is None
    schema = parse_spec("hf-hub:org/some-clip")
    assert schema.model == "hf-hub:org/some-clip" and schema.pretrained is None
    checkpoint = tmp_path / "weights.bin"
    checkpoint.write_bytes(b"x")
    local = parse_spec(f"ViT-B-32:{checkpoint}")
    assert local.is_file and local.pretrained == str(checkpoint.resolve())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty embedder spec"),
        (":laion2b_s34b_b79k", "no model name"),
        ("ViT-L-14", "names no weights"),
        ("ViT-B-32:/no/such/dir/model.pt", "checkpoint file '/no/such/dir/model.pt' not found"),
    ],
)
def test_parse_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(EmbedderError, match=message):
        parse_spec(spec)


def test_embedder_id_names_weights_and_size(tmp_path: Path) -> None:
    assert OpenClipEmbedder().embedder_id == "open_clip:ViT-B-32:laion2b_s34b_b79k"
    assert OpenClipEmbedder("ViT-B-32:none", image_size=64).embedder_id == (
        "open_clip:ViT-B-32:none-seed0:size64"
    )
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"one")
    first = OpenClipEmbedder(f"ViT-B-32:{checkpoint}").embedder_id
    assert first.startswith("open_clip:ViT-B-32:file-ckpt.pt-")
    checkpoint.write_bytes(b"other weights")
    os.utime(checkpoint, ns=(1, 1))
    assert OpenClipEmbedder(f"ViT-B-32:{checkpoint}").embedder_id != first


def test_unreachable_weights_say_how_to_pass_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to download weights for tag 'laion2b_s34b_b79k'")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(EmbedderError) as caught:
        OpenClipEmbedder(DEFAULT_EMBEDDER).embed_text(["a dog"])
    message = str(caught.value)
    assert DEFAULT_EMBEDDER in message and "Failed to download" in message
    assert "ViT-B-32:/path/to/open_clip_pytorch_model.bin" in message
    assert "HF_HUB_OFFLINE=1" in message and "ViT-B-32:none" in message


def test_unknown_model_name() -> None:
    with pytest.raises(EmbedderError, match="unknown open_clip model 'ViT-Q-99'"):
        OpenClipEmbedder("ViT-Q-99:none").load()


def test_load_embedder_passes_objects_through() -> None:
    class Fake:
        embedder_id = "fake"

        def embed_images(self, images):  # noqa: ANN001, ANN201
            return np.zeros((len(images), 2), np.float32)

        def embed_text(self, texts):  # noqa: ANN001, ANN201
            return np.zeros((len(texts), 2), np.float32)

    fake = Fake()
    assert load_embedder(fake) is fake and isinstance(fake, Embedder)
    assert isinstance(load_embedder("ViT-B-32:none"), OpenClipEmbedder)
    with pytest.raises(TypeError):
        load_embedder(42)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small() -> OpenClipEmbedder:
    return OpenClipEmbedder(f"{SMALL}:none", image_size=64, device="cpu", batch_size=3).load()


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)) for _ in range(5)]


def test_real_model_gives_unit_float32_rows(small: OpenClipEmbedder) -> None:
    images = small.embed_images(_images())
    texts = small.embed_text(["a red car", "two dogs", "a kitchen"])
    assert images.shape == (5, 384) and texts.shape == (3, 384)
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert small.embed_images([]).shape == (0, 384)
    # Batches of 3 give what one batch gives.
    one_batch = OpenClipEmbedder(f"{SMALL}:none", image_size=64, device="cpu", batch_size=8)
    np.testing.assert_allclose(one_batch.embed_images(_images()), images, atol=1e-5)


def test_random_weights_are_the_same_in_every_instance(small: OpenClipEmbedder) -> None:
    again = OpenClipEmbedder(f"{SMALL}:none", image_size=64, device="cpu")
    np.testing.assert_allclose(again.embed_text(["a cat"]), small.embed_text(["a cat"]), atol=1e-6)


def test_local_checkpoint_file_loads(small: OpenClipEmbedder, tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "small.pt"
    torch.save(small._model.state_dict(), checkpoint)
    local = OpenClipEmbedder(f"{SMALL}:{checkpoint}", image_size=64, device="cpu")
    np.testing.assert_allclose(local.embed_text(["a cat"]), small.embed_text(["a cat"]), atol=1e-6)

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(EmbedderError, match="cannot load checkpoint"):
        OpenClipEmbedder(f"{SMALL}:{broken}", image_size=64, device="cpu").load()
