"""Video-MTR training files -> verl parquet rows (no verl needed)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.integrations.verl.data import AGENT_NAME, main


def test_rows_carry_the_item_for_the_agent_loop(tmp_path, capsys) -> None:
    split = generate(tmp_path / "syn", SyntheticSettings(n_items=2, seed=3, minutes=0.5))
    out = tmp_path / "train.parquet"
    assert main([str(split), str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    items = load_video_mtr_json(split)
    assert [row["agent_name"] for row in table] == [AGENT_NAME] * 2
    for row, item in zip(table, items, strict=True):
        carried = json.loads(row["vmtr_item"])
        assert carried["question"] == item.question and carried["answer"] == item.answer
        assert carried["options"] == item.options
        assert carried["relevant_windows"] == [list(w) for w in item.relevant_windows]
        assert carried["video"] == str(item.video.resolve())
        assert row["prompt"] == [{"role": "user", "content": item.question}]
    assert "2 items" in capsys.readouterr().out


def test_a_broken_file_is_one_error_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"problem_id": "1"}]))
    assert main([str(bad), str(tmp_path / "out.parquet")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing field" in err and len(err.splitlines()) == 1
