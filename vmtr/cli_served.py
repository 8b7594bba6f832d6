"""The command-line side of served models: the ``--base-url`` family of options shared by
`vmtr ask` and `vmtr eval`, and the one place the API key is read from the environment.

The key is read here and handed to the backend's client, never to a settings object, so it
cannot reach the output, the logs, the results files or a run's identity.
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer


def served_video_lm(served: Any, model_settings: Any, api_key_env: str | None) -> Any:
    """The backend for ``--base-url``: its key read from ``api_key_env`` (default
    ``OPENAI_API_KEY``, optional for local servers), the server checked before any frame is
    decoded. The key goes only to the client; no message names its value."""
    from vmtr.models.openai_api import QWEN_FACTOR, OpenAIVideoLM

    variable = api_key_env or "OPENAI_API_KEY"
    key = os.environ.get(variable) or None
    if api_key_env and key is None:
        raise ValueError(f"--api-key-env {api_key_env}: that environment variable is not set")
    hint = (
        f"the API key in ${variable}"
        if key
        else f"the API key: none was sent (set {variable}, or name another variable with "
        "--api-key-env)"
    )
    budget = {
        "max_pixels": model_settings.max_pixels,
        "min_pixels": model_settings.min_pixels,
        "factor": QWEN_FACTOR,
    }
    lm = OpenAIVideoLM(served, api_key=key, key_hint=hint, pixel_budget=budget)
    lm.check()
    return lm


BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        help="Ask the model behind this OpenAI-compatible endpoint (vLLM, SGLang, `transformers "
        "serve`, a hosted API), e.g. http://127.0.0.1:8000/v1; --model is then its served name.",
    ),
]
ApiKeyEnvOption = Annotated[
    str | None,
    typer.Option(
        help="With --base-url: the environment variable holding the API key "
        "(default OPENAI_API_KEY, optional for local servers)."
    ),
]
MaxPixelsOption = Annotated[
    int,
    typer.Option(min=784, help="Pixel budget per frame (the processor's own cap still applies)."),
]
RetriesOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="With --base-url: retries of refused connections, timeouts, 429 and 5xx "
        "(waits of 1, 2, 4 ... s, at most 30 s).",
    ),
]
ToolProtocolOption = Annotated[
    str,
    typer.Option(
        help="With --base-url: text (the Video-MTR tags the released checkpoint was trained "
        "on) or native (select_segment and answer as tools, for servers that parse tool calls).",
    ),
]
ImageFormatOption = Annotated[
    str,
    typer.Option(help="With --base-url: png (the decoded pixels exactly) or jpeg (smaller)."),
]
ExtraBodyOption = Annotated[
    str | None,
    typer.Option(
        help="With --base-url: a JSON object of server-specific request fields, e.g. "
        '\'{"mm_processor_kwargs": {"max_pixels": 100352}}\' for vLLM.'
    ),
]
TimeoutOption = Annotated[
    float, typer.Option(min=1.0, help="With --base-url: seconds one request may take.")
]


def served_settings(
    base_url: str | None,
    model: str,
    *,
    timeout: float = 300.0,
    retries: int = 4,
    tool_protocol: str = "text",
    image_format: str = "png",
    extra_body: str | None = None,
) -> Any:
    """The `ServedSettings` of the ``--base-url`` options, or None without a base URL."""
    from vmtr.config import ServedSettings

    if tool_protocol not in ("text", "native"):
        raise ValueError(f"--tool-protocol must be text or native, got {tool_protocol!r}")
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"--image-format must be png or jpeg, got {image_format!r}")
    if base_url is None:
        if tool_protocol != "text" or image_format != "png" or extra_body:
            raise ValueError(
                "--tool-protocol, --image-format and --extra-body are for models behind --base-url"
            )
        return None
    body = None
    if extra_body:
        try:
            body = json.loads(extra_body)
        except ValueError as error:
            raise ValueError(f"--extra-body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise ValueError("--extra-body must be a JSON object")
    return ServedSettings(
        base_url=base_url,
        model=model,
        timeout=timeout,
        max_retries=retries,
        tool_protocol=tool_protocol,  # type: ignore[arg-type]
        image_format=image_format,  # type: ignore[arg-type]
        extra_body=body,
    )
