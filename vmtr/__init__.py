"""vmtr: ask questions about long videos with a multi-turn, segment-selecting VLM agent.

Front doors: `ask` (one question, one answer with its trace) and `build_graph` (the LangGraph
agent, to run yourself or drop into a host graph). Both import lazily so that `import vmtr` and
the CLI start fast.
"""

from typing import Any

__all__ = ["AskResult", "ask", "build_graph"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("ask", "AskResult"):
        from vmtr.agent import ask as ask_module

        return getattr(ask_module, name)
    if name == "build_graph":
        from vmtr.agent.graph import build_graph

        return build_graph
    raise AttributeError(f"module 'vmtr' has no attribute {name!r}")
