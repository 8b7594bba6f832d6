"""`vmtr ask` and `vmtr eval` with ``--base-url``: one ``error:`` line when the server is down,
failed requests as error rows (never scored), the run identity naming base URL and model, and
the API key nowhere in what the commands print or write."""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path

import pytest
from served_fakes import FakeServer, completion
from typer.testing import CliRunner

from vmtr.cli import app
from vmtr.eval.synthetic import SyntheticSettings, generate

KEY = "sk-live-9f8e7d6c5b4a3210"


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("syn")
    generate(folder, SyntheticSettings(n_items=4, seed=9092, minutes=0.2))
    return folder


def fake_backend(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    """Route the CLI's backend through ``server`` instead of the network."""
    from vmtr.models import openai_api

    patched = functools.partialmethod(
        openai_api.OpenAIVideoLM.__init__, http_client=server.client(), sleep=lambda s: None
    )
    monkeypatch.setattr(openai_api.OpenAIVideoLM, "__init__", patched)


def test_ask_with_the_server_down_fails_in_one_line(make_video):
    video = make_video("clip.mp4", seconds=8.0, fps=2.0)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    args = ["ask", str(video), "What?", "--base-url", url, "--model", "m", "--retries", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the model server at {url}")
    assert "Traceback" not in result.output


def test_ask_names_an_unset_key_variable(make_video, monkeypatch):
    monkeypatch.delenv("VMTR_TEST_NO_SUCH_KEY", raising=False)
    video = make_video("clip.mp4", seconds=8.0, fps=2.0)
    args = ["ask", str(video), "What?", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    result = CliRunner().invoke(app, [*args, "--api-key-env", "VMTR_TEST_NO_SUCH_KEY"])
    assert result.exit_code == 1
    assert "error: --api-key-env VMTR_TEST_NO_SUCH_KEY: that environment variable is not set" in (
        result.stderr
    )


def test_ask_through_a_server(make_video, monkeypatch):
    server = FakeServer([completion("<think>x</think><answer>a red ball</answer>")])
    fake_backend(monkeypatch, server)
    monkeypatch.setenv("MY_KEY", KEY)
    video = make_video("clip.mp4", seconds=8.0, fps=2.0)
    args = ["ask", str(video), "What?", "--base-url", "http://127.0.0.1:9/v1", "-m", "served-model"]
    extra = ["--extra-body", '{"mm_processor_kwargs": {"max_pixels": 3136}}']
    extra += ["--image-format", "jpeg"]
    result = CliRunner().invoke(app, [*args, "--api-key-env", "MY_KEY", *extra, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["answer"] == "a red ball"
    body = server.bodies[0]
    assert body["mm_processor_kwargs"] == {"max_pixels": 3136}
    images = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
    assert images and all(p["image_url"]["url"].startswith("data:image/jpeg;") for p in images)
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"
    assert KEY not in result.output


def test_served_options_are_checked(make_video):
    video = make_video("clip.mp4", seconds=8.0, fps=2.0)
    base = ["ask", str(video), "What?", "--base-url", "http://127.0.0.1:9/v1"]
    for extra, said in [
        (["--extra-body", "{nope"], "error: --extra-body is not JSON"),
        (["--extra-body", "[1]"], "error: --extra-body must be a JSON object"),
        (["--tool-protocol", "xml"], "error: --tool-protocol must be text or native"),
    ]:
        result = CliRunner().invoke(app, [*base, *extra])
        assert result.exit_code == 1 and said in result.stderr, result.output
    local = CliRunner().invoke(app, ["ask", str(video), "What?", "--tool-protocol", "native"])
    assert local.exit_code == 1 and "are for models behind --base-url" in local.stderr


def test_eval_records_failed_requests_as_error_rows(synthetic, tmp_path, monkeypatch):
    from vmtr.eval.datasets import load_benchmark

    items = load_benchmark("synthetic", synthetic)
    failing = items[1].question

    def reply(body: dict) -> object:
        question = json.dumps(body["messages"][1])
        if failing in question:
            return (503, {"error": {"message": "engine overloaded"}})
        return completion("<think>x</think><answer>A</answer>")

    server = FakeServer([reply] * 40)
    fake_backend(monkeypatch, server)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    output = tmp_path / "out"
    args = ["eval", "synthetic", "--data", str(synthetic), "-o", str(output)]
    served = ["--base-url", "http://127.0.0.1:9/v1", "--model", "served-model"]
    result = CliRunner().invoke(app, [*args, *served, "--concurrency", "2", "--retries", "1"])
    assert result.exit_code == 0, result.output
    assert "on 3 questions, 1 errors" in result.stdout  # the failed one is not scored
    rows = [json.loads(line) for line in (output / "samples.jsonl").open()]
    bad = next(r for r in rows if r["question"] == failing)
    assert bad["status"] == "error" and bad["correct"] is None and bad["prediction"] is None
    assert "answered 503 (2 tries): engine overloaded" in bad["error"]
    assert all(r["status"] == "ok" for r in rows if r["question"] != failing)
    config = json.loads((output / "results.json").read_text())["config"]
    assert config["served"]["base_url"] == "http://127.0.0.1:9/v1"
    assert config["served"]["model"] == "served-model"
    for path in output.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in result.output
    # the same command resumes: only the failed question is asked again
    asked = len(server.bodies)
    again = CliRunner().invoke(app, [*args, *served, "--concurrency", "2", "--retries", "0"])
    assert again.exit_code == 0 and "resumed: 3 question(s)" in again.stderr
    assert len(server.bodies) == asked + 1


def test_concurrency_is_for_served_models(synthetic, tmp_path):
    args = ["eval", "synthetic", "--data", str(synthetic), "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--concurrency", "2"])
    assert result.exit_code == 1 and "error: --concurrency is for --base-url" in result.stderr


def test_eval_with_the_server_down_fails_before_any_question(synthetic, tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    args = ["eval", "synthetic", "--data", str(synthetic), "-o", str(tmp_path / "o")]
    result = CliRunner().invoke(app, [*args, "--base-url", url, "--model", "m", "--retries", "0"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the model server at {url}")
    assert not (tmp_path / "o" / "results.sqlite").exists()
