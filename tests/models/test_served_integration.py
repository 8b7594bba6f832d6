"""A real `transformers serve` on 127.0.0.1 with the bundled tiny model, driven by `vmtr ask` and
`vmtr eval --concurrency 2`, its greedy replies checked against the in-process backend.

They are equal, prompt tokens included, turn for turn: the frames travel as PNG at the tiny
processor's pixel cap (12544), so the server's processor resizes nothing and sees the pixels the
in-process backend sees; both render the prompt with the same chat template; both decode greedily
to ``<|im_end|>``. The one thing the server changes is the reply's form: its Qwen response parser
moves ``<think>...</think>`` into ``reasoning_content``, and the backend puts it back in front.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmtr.cli import app
from vmtr.eval.synthetic import SyntheticSettings, generate
from vmtr.models.tiny import TINY_DIR

pytestmark = pytest.mark.slow

TINY_BUDGET = "12544"  # the tiny processor's longest_edge: the in-process budget for it
GREEDY = ["--temperature", "0", "--max-new-tokens", "128", "--max-pixels", TINY_BUDGET]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` pinned to the tiny model; yields its base URL, stops it by pid."""
    pytest.importorskip("fastapi", reason="needs transformers[serving] (the dev extra)")
    pytest.importorskip("uvicorn", reason="needs transformers[serving] (the dev extra)")
    command = shutil.which("transformers", path=str(Path(sys.executable).parent))
    assert command, "the transformers command is missing next to this Python"
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as sink:
        process = subprocess.Popen(
            [command, "serve", str(TINY_DIR), "--host", "127.0.0.1", "--port", str(port)]
            + ["--device", "cpu"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited ({process.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start in 300s:\n{log.read_text()}")
            time.sleep(1)
        yield f"{base}/v1"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("syn")
    generate(folder, SyntheticSettings(n_items=4, seed=5000, minutes=1.0))
    return folder


def test_ask_answers_through_the_server(server, synthetic):
    video = next((synthetic / "videos").glob("*.mp4"))
    args = ["ask", str(video), "What colour is the shape?", "--base-url", server]
    result = subprocess.run(
        [sys.executable, "-m", "vmtr.cli", *args, "--model", str(TINY_DIR), *GREEDY, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    turns = json.loads(result.stdout)["turns"]
    assert turns and all(t["prompt_tokens"] > 0 and t["completion_tokens"] > 0 for t in turns)


def test_eval_through_the_server_matches_the_in_process_model(server, synthetic, tmp_path):
    common = ["eval", "synthetic", "--data", str(synthetic), "--model", str(TINY_DIR), *GREEDY]
    served = CliRunner().invoke(
        app, [*common, "-o", str(tmp_path / "served"), "--base-url", server, "--concurrency", "2"]
    )
    assert served.exit_code == 0, served.output
    local = CliRunner().invoke(app, [*common, "-o", str(tmp_path / "local"), "--device", "cpu"])
    assert local.exit_code == 0, local.output

    def samples(folder: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / folder / "samples.jsonl").open()]

    remote, here = samples("served"), samples("local")
    assert len(remote) == len(here) == 4
    assert all(s["status"] == "ok" for s in remote)
    for a, b in zip(remote, here, strict=True):
        assert a["id"] == b["id"] and a["prediction"] == b["prediction"]
        assert [t["raw"] for t in a["turns"]] == [t["raw"] for t in b["turns"]]
        assert [t["frames"] for t in a["turns"]] == [t["frames"] for t in b["turns"]]
        assert [t["prompt_tokens"] for t in a["turns"]] == [t["prompt_tokens"] for t in b["turns"]]
        assert [t["completion_tokens"] for t in a["turns"]] == [
            t["completion_tokens"] for t in b["turns"]
        ]
    config = json.loads((tmp_path / "served" / "results.json").read_text())["config"]
    assert config["served"] == {
        "base_url": server,
        "model": str(TINY_DIR),
        "image_format": "png",
        "extra_body": None,
    }


def test_a_model_the_server_does_not_serve_is_named(server, synthetic):
    video = next((synthetic / "videos").glob("*.mp4"))
    args = ["ask", str(video), "What?", "--base-url", server, "--model", "no-such-model"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "pass --model with a name the server serves" in result.stderr
    assert str(TINY_DIR) in result.stderr  # the name it does serve
