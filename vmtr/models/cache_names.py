"""One spelling of the KV-cache argument across the transformers releases vmtr supports.

transformers renamed the forward argument ``past_key_values`` to ``cache`` (and the output field
with it) during the 5.x line. Newer releases still take the old name but warn on every call and
drop it in 5.40; older ones know only the old name. Every forward call in vmtr goes through
`cache_kwargs` and reads the returned cache with `output_cache`, so one check at import decides.
"""

from __future__ import annotations

import inspect
from typing import Any

from transformers import Qwen2_5_VLForConditionalGeneration

CACHE_ARG = (
    "cache"
    if "cache" in inspect.signature(Qwen2_5_VLForConditionalGeneration.forward).parameters
    else "past_key_values"
)
"""The keyword this transformers release's forward takes the KV cache under."""


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{CACHE_ARG: cache}``, to unpack into a model call."""
    return {CACHE_ARG: cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward call returned."""
    return getattr(output, CACHE_ARG)
