"""open_clip image and text embedder for the segment store.

The store ranks video frames by their CLIP similarity to a question. Any object with an
`embedder_id` and the two `embed_*` methods of `Embedder` will do (tests inject a tiny
deterministic one); `OpenClipEmbedder` is the real one, chosen by a spec string:

- `ViT-B-32:laion2b_s34b_b79k` — an open_clip model name and pretrained tag (the default),
  fetched through the usual Hugging Face cache;
- `ViT-B-32:/path/to/open_clip_pytorch_model.bin` — a local checkpoint file;
- `ViT-B-32:none` — random weights, seeded so every process gets the same model (tests, offline
  checks; its similarities mean nothing);
- `hf-hub:org/repo` or `local-dir:/folder` — open_clip's own schemas, passed through.

torch and open_clip are imported only when the model is first used, so opening a store (which
needs only `embedder_id`) stays instant.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

from vmtr.models.hub import offline_unless_reachable

DEFAULT_EMBEDDER = "ViT-B-32:laion2b_s34b_b79k"
"""The default spec: open_clip's ViT-B/32 trained on LAION-2B (512-d embeddings)."""

RANDOM_TAGS = frozenset({"none", "random"})
"""Tags meaning "no pretrained weights"."""

_SCHEMAS = ("hf-hub:", "local-dir:")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_RANDOM_SEED = 0


class EmbedderError(Exception):
    """An embedder that cannot be built or loaded; the message says what to do instead."""


@runtime_checkable
class Embedder(Protocol):
    """What the segment store needs from an embedder.

    Both methods return float32 arrays of shape [n, d] with unit-length rows, so inner products
    are cosine similarities. `embedder_id` names the weights and preprocessing: two embedders
    with the same id must give the same vectors, since stores are cached under it.
    """

    embedder_id: str

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_text(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class EmbedderSpec:
    """A parsed spec string: open_clip model name and where its weights come from."""

    model: str
    pretrained: str | None  # a tag, a local file path, or None for random / schema weights
    random_weights: bool

    @property
    def is_file(self) -> bool:
        """Whether the weights are a local checkpoint file rather than a tag."""
        return self.pretrained is not None and _looks_like_path(self.pretrained)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith(("~", "."))
        or value.lower().endswith(_CHECKPOINT_SUFFIXES)
    )


def parse_spec(spec: str) -> EmbedderSpec:
    """Split `MODEL[:TAG]`; a missing tag means the model's default pretrained tag.

    Raises `EmbedderError` for an empty spec, an empty model name, or a local checkpoint path
    that is not a readable file (checked here so the mistake shows before any work starts).
    """
    text = spec.strip()
    if not text:
        raise EmbedderError("empty embedder spec; use e.g. " + DEFAULT_EMBEDDER)
    if text.startswith(_SCHEMAS):
        return EmbedderSpec(model=text, pretrained=None, random_weights=False)
    model, _, tag = text.partition(":")
    model, tag = model.strip(), tag.strip()
    if not model:
        raise EmbedderError(
            f"embedder spec {spec!r} has no model name; use e.g. {DEFAULT_EMBEDDER}"
        )
    if not tag:
        default_model, _, default_tag = DEFAULT_EMBEDDER.partition(":")
        tag = default_tag if model == default_model else ""
        if not tag:
            raise EmbedderError(
                f"embedder spec {spec!r} names no weights; add `:TAG` (a pretrained tag), "
                f"`:/path/to/checkpoint` or `:none` for random weights"
            )
    if tag.lower() in RANDOM_TAGS:
        return EmbedderSpec(model=model, pretrained=None, random_weights=True)
    if _looks_like_path(tag):
        path = Path(tag).expanduser()
        if not path.is_file():
            raise EmbedderError(
                f"embedder {spec!r}: checkpoint file {str(path)!r} not found "
                f"(pass an existing open_clip checkpoint: MODEL:/path/to/file.bin)"
            )
        tag = str(path.resolve())
    return EmbedderSpec(model=model, pretrained=tag, random_weights=False)


def _file_identity(path: str) -> str:
    """Short hash of a checkpoint's name, size and mtime: cheap, and changes when it is replaced."""
    info = os.stat(path)
    key = f"{os.path.basename(path)}:{info.st_size}:{info.st_mtime_ns}"
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


class OpenClipEmbedder:
    """Embeds PIL images and strings with an open_clip model; loads the model on first use.

    `device` is `auto` (CUDA when available), `cpu`, `cuda`, `cuda:1`, ...; `image_size`
    overrides the model's input size (smaller is faster, and changes `embedder_id`).
    """

    def __init__(
        self,
        spec: str = DEFAULT_EMBEDDER,
        *,
        device: str = "auto",
        batch_size: int = 32,
        image_size: int | None = None,
        cache_dir: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.spec = spec
        self.parsed = parse_spec(spec)
        self.device_name = device
        self.batch_size = batch_size
        self.image_size = image_size
        self.cache_dir = cache_dir
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._device: Any = None
        self._dim = 0

    @property
    def embedder_id(self) -> str:
        """`open_clip:MODEL:WEIGHTS[:sizeN]`; a local file is named by its file name and hash."""
        parsed = self.parsed
        if parsed.random_weights:
            weights = f"none-seed{_RANDOM_SEED}"
        elif parsed.pretrained is None:
            weights = "schema"
        elif parsed.is_file:
            weights = f"file-{Path(parsed.pretrained).name}-{_file_identity(parsed.pretrained)}"
        else:
            weights = parsed.pretrained
        size = f":size{self.image_size}" if self.image_size else ""
        return f"open_clip:{parsed.model}:{weights}{size}"

    def __repr__(self) -> str:
        return f"OpenClipEmbedder({self.spec!r}, device={self.device_name!r})"

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> OpenClipEmbedder:
        """Build the model now (otherwise the first `embed_*` call does); returns self."""
        if self._model is not None:
            return self
        import open_clip
        import torch

        parsed = self.parsed
        known = set(open_clip.list_models())
        if not parsed.model.startswith(_SCHEMAS) and parsed.model not in known:
            raise EmbedderError(
                f"embedder {self.spec!r}: unknown open_clip model {parsed.model!r} "
                f"(see open_clip.list_models(); e.g. ViT-B-32, ViT-L-14)"
            )
        if self.device_name == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device_name)
        kwargs: dict[str, Any] = {"device": device, "cache_dir": self.cache_dir}
        if self.image_size:
            kwargs["force_image_size"] = self.image_size
        try:
            # Seeded so random weights are the same in every process (store and search agree).
            with torch.random.fork_rng(devices=[]), offline_unless_reachable():
                torch.manual_seed(_RANDOM_SEED)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    parsed.model, pretrained=parsed.pretrained, **kwargs
                )
            tokenizer = open_clip.get_tokenizer(parsed.model, cache_dir=self.cache_dir)
        except EmbedderError:
            raise
        except Exception as err:  # open_clip and huggingface_hub raise many kinds
            raise EmbedderError(self._load_failure(err)) from err
        model.eval()
        with torch.inference_mode():
            probe = model.encode_text(tokenizer(["a"]).to(device))
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer
        self._device, self._dim = device, int(probe.shape[-1])
        return self

    def _load_failure(self, err: Exception) -> str:
        parsed = self.parsed
        reason = " ".join(str(err).split()) or type(err).__name__
        if len(reason) > 240:
            reason = reason[:240].rsplit(" ", 1)[0] + " ..."
        if parsed.is_file:
            return (
                f"embedder {self.spec!r}: cannot load checkpoint {parsed.pretrained!r} "
                f"into {parsed.model} ({reason})"
            )
        if parsed.pretrained is None and not parsed.random_weights:
            return f"embedder {self.spec!r}: cannot load {parsed.model} ({reason})"
        return (
            f"embedder {self.spec!r}: cannot get the {parsed.model} weights "
            f"{parsed.pretrained!r} ({reason}). Download them once where the Hugging Face hub "
            f"is reachable (they stay in its cache; set HF_HUB_OFFLINE=1 to use the cache "
            f"without retries), or pass a local checkpoint file as "
            f"{parsed.model}:/path/to/open_clip_pytorch_model.bin; {parsed.model}:none gives "
            f"random weights for tests"
        )

    # -- embedding -----------------------------------------------------------------------------

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Unit-length float32 image embeddings [n, d], computed `batch_size` images at a time."""
        self.load()
        import torch

        parts = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            pixels = torch.stack([self._preprocess(image.convert("RGB")) for image in batch])
            with torch.inference_mode():
                features = self._model.encode_image(pixels.to(self._device))
            parts.append(_unit_rows(features))
        return _stack(parts, self._dim)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 text embeddings [n, d]."""
        self.load()
        import torch

        parts = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[start : start + self.batch_size]))
            with torch.inference_mode():
                features = self._model.encode_text(tokens.to(self._device))
            parts.append(_unit_rows(features))
        return _stack(parts, self._dim)


def _unit_rows(features: Any) -> np.ndarray:
    """To float32 numpy with unit-length rows (normalised in float32, on the host)."""
    array = features.float().cpu().numpy().astype(np.float32, copy=False)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _stack(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def load_embedder(spec: str | Embedder, **kwargs: Any) -> Embedder:
    """An embedder from a spec string, or the given embedder object unchanged."""
    if isinstance(spec, str):
        return OpenClipEmbedder(spec, **kwargs)
    if not isinstance(spec, Embedder):
        raise TypeError(f"expected a spec string or an Embedder, got {type(spec).__name__}")
    return spec
