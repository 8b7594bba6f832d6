"""Video-MTR training files as verl's RL dataset: ``python -m vmtr.integrations.verl.data``.

verl reads parquet rows with a ``prompt`` (chat messages), a ``data_source`` and whatever other
columns the agent loop needs. Each row here names the agent loop (``agent_name``), keeps the
question as a text-only prompt (what verl's length filter and logs see; the loop builds the real
messages itself, with the frames) and carries the whole item as JSON in ``vmtr_item``. Items are
read with `vmtr.eval.datasets.load_video_mtr_json`, exactly as ``vmtr train rl`` reads them, so
video paths are resolved against the file's folder and written out absolute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vmtr.eval.datasets import DatasetError, QAItem, load_video_mtr_json

AGENT_NAME = "vmtr_video_mtr"  # the name `agent_loop` registers (kept here to avoid importing verl)


def item_json(item: QAItem) -> str:
    """The fields the agent loop and the reward need, as JSON."""
    return json.dumps(
        {
            "id": item.id,
            "video": str(Path(item.video).resolve()),
            "question": item.question,
            "options": list(item.options),
            "answer": item.answer,
            "relevant_windows": [[float(s), float(e)] for s, e in item.relevant_windows],
        }
    )


def rows(items: list[QAItem], data_source: str = "video_mtr") -> list[dict[str, Any]]:
    """One verl dataset row per item."""
    return [
        {
            "data_source": str(item.categories.get("data_source", data_source)),
            "agent_name": AGENT_NAME,
            "prompt": [{"role": "user", "content": item.question}],
            "reward_model": {"style": "rule", "ground_truth": item.answer or ""},
            "extra_info": {"index": i, "problem_id": item.id},
            "vmtr_item": item_json(item),
        }
        for i, item in enumerate(items)
    ]


def write_parquet(items: list[QAItem], out: str | Path) -> Path:
    """Write the rows of ``items`` to ``out`` (parquet, as verl's data loader reads it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows(items)), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vmtr.integrations.verl.data",
        description="Convert a Video-MTR training file (JSON list or split folder) to verl parquet.",
    )
    parser.add_argument("source", help="Video-MTR JSON file, or a folder with annotations.json")
    parser.add_argument("out", help="parquet file to write")
    args = parser.parse_args(argv)
    try:
        items = load_video_mtr_json(args.source)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_parquet(items, args.out)
    print(f"{len(items)} items -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
