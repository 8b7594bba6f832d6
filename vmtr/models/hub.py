"""Fail fast without the Hugging Face hub.

Offline, `from_pretrained` and open_clip's downloads retry for minutes before giving up. A quick
socket check tells vmtr whether the hub can answer at all; when it cannot, the hub client is put
in offline mode so that cached files load at once and missing ones fail at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint (``HF_ENDPOINT``) accepts a TCP connection."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the body with the hub client offline when the hub cannot be reached; yields whether
    it is online."""
    from huggingface_hub import constants

    online = hub_reachable()
    before = constants.HF_HUB_OFFLINE
    if not online:
        constants.HF_HUB_OFFLINE = True
    try:
        yield online
    finally:
        constants.HF_HUB_OFFLINE = before
