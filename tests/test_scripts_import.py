"""Every recipe script and benchmark imports cleanly: a renamed or removed library name breaks
here rather than on the next long run."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    [*ROOT.glob("recipes/tiny/*.py"), *ROOT.glob("benchmarks/*.py")],
    key=lambda p: str(p.relative_to(ROOT)),
)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_script_imports(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # scripts put their folders on it
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    module = importlib.import_module(name)
    assert module.__doc__, f"{name} has no docstring"
    assert callable(getattr(module, "main", None)) or path.name == "__init__.py"
