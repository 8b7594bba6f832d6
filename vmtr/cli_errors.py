"""The command line's one error path: every failure a user can cause ends in one ``error:`` line
on stderr and exit code 1, never a traceback (``VMTR_DEBUG=1`` shows one for the unexpected).
Every `vmtr` command goes through `fail` / `user_errors`, so the wording and exit codes agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

err = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print one error line on stderr and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line and exit code 1."""
    from pydantic import ValidationError

    from vmtr.models.openai_api import ServedModelError
    from vmtr.models.vlm import ModelLoadError
    from vmtr.tools.video import VideoError

    try:
        yield
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        # a check across settings has no field to name; its own message says which flags
        message = str(first.get("msg", error)).removeprefix("Value error, ")
        raise fail(f"invalid setting {where}: {message}" if where else message) from None
    except (VideoError, ModelLoadError, ServedModelError, ValueError, FileNotFoundError) as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        raise fail("interrupted") from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - last line of defence against tracebacks
        if os.environ.get("VMTR_DEBUG"):
            raise
        raise fail(
            f"unexpected {type(error).__name__}: {error} (set VMTR_DEBUG=1 for a traceback)"
        ) from None


def quiet_libraries() -> None:
    """Keep transformers' own progress bars and notices off the user's terminal."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns through the root logger
