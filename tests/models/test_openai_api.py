"""The served backend against a scripted chat-completions server on an in-memory transport:
what each request holds (frames after their labels, at the pixel budget, the whole history,
the generation settings), usage in the trace, retries and their limits, errors that say what to
change, and the key kept out of everything but the Authorization header."""

from __future__ import annotations

import pytest
from served_fakes import FakeServer, completion, image_of, refused, timed_out

from vmtr import ask
from vmtr.config import ServedSettings
from vmtr.models.openai_api import OpenAIVideoLM, ServedModelError

OPTIONS = ["A. red", "B. green", "C. blue", "D. yellow"]
RETRIEVE = "<think>need more</think><retrieve>8, 15</retrieve>"
ANSWER = "<think>seen it</think><answer>B</answer>"
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def video(make_video):
    return make_video("clip.mp4", seconds=40.0, fps=2.0, size=(112, 112))


def served(server: FakeServer, sleeps: list[float] | None = None, **settings) -> OpenAIVideoLM:
    config = ServedSettings(base_url="http://127.0.0.1:9/v1", model="served-model", **settings)
    slept = sleeps if sleeps is not None else []
    return OpenAIVideoLM(config, api_key=KEY, http_client=server.client(), sleep=slept.append)


def test_each_turn_sends_the_whole_history_with_labelled_frames(video, read_frame_index):
    server = FakeServer([completion(RETRIEVE), completion(ANSWER)])
    lm = served(server, extra_body={"mm_processor_kwargs": {"max_pixels": 12544}})
    result = ask(video, "What colour?", OPTIONS, model=lm, temperature=0.0, max_new_tokens=64)
    assert result.answer == "B" and len(server.bodies) == 2
    first, second = server.bodies
    assert first["model"] == "served-model"
    assert (first["temperature"], first["top_p"], first["max_tokens"], first["seed"]) == (
        0.0,
        1.0,
        64,
        0,
    )
    assert first["mm_processor_kwargs"] == {"max_pixels": 12544}  # extra_body, passed through
    system, user = first["messages"]
    assert system["role"] == "system" and isinstance(system["content"], str)
    parts = user["content"]
    images = [i for i, p in enumerate(parts) if p["type"] == "image_url"]
    assert len(images) == 16
    for n, at in enumerate(images):
        frame = result.turns[0]["frames"][n]
        assert parts[at - 1] == {"type": "text", "text": f"frame_idx:{frame}, "}
        image = image_of(parts[at])
        assert image.format == "PNG" and image.width % 28 == 0 and image.height % 28 == 0
        assert image.width * image.height <= lm.pixel_budget["max_pixels"]
        # the picture is the pool frame its label names (pool at 1 fps, the video at 2 fps)
        assert read_frame_index(image) == int(result.pool[frame] * 2)
    # turn 2: the same first two messages, the reply verbatim, then the 8 retrieved frames
    assert second["messages"][:2] == first["messages"]
    assert second["messages"][2] == {"role": "assistant", "content": RETRIEVE}
    new = [p for p in second["messages"][3]["content"] if p["type"] == "image_url"]
    assert len(new) == 8 and result.turns[1]["frames"] == list(range(8, 16))


def test_usage_goes_into_the_trace(video):
    server = FakeServer([completion(ANSWER, prompt=900, completion=11, prompt_tokens_details=None)])
    server.replies[0]["usage"]["prompt_tokens_details"] = {"cached_tokens": 640}
    result = ask(video, "What colour?", OPTIONS, model=served(server))
    turn = result.turns[0]
    assert (turn["prompt_tokens"], turn["new_prompt_tokens"], turn["completion_tokens"]) == (
        900,
        260,
        11,
    )


def test_a_think_block_split_off_by_the_server_is_put_back(video):
    # transformers serve (and vLLM/SGLang with a reasoning parser) move <think> into a field
    reply = completion("<answer>B</answer>", reasoning_content="seen it")
    result = ask(video, "What colour?", OPTIONS, model=served(FakeServer([reply])))
    assert result.turns[0]["raw"] == ANSWER and result.answer == "B"


def test_transient_failures_are_retried_with_doubling_capped_waits(video):
    sleeps: list[float] = []
    server = FakeServer(
        [
            refused(),
            (503, {"error": {"message": "overloaded"}}),
            timed_out(),
            (500, {"detail": "boom"}),
            completion(ANSWER),
        ]
    )
    lm = served(server, sleeps, backoff=0.5, max_backoff=3.0)
    assert ask(video, "What colour?", OPTIONS, model=lm).answer == "B"
    assert sleeps == [0.5, 1.0, 2.0, 3.0]
    assert len(server.bodies) == 5


def test_a_rate_limit_waits_as_long_as_the_server_asks(video):
    sleeps: list[float] = []
    limited = (429, {"error": {"message": "slow down"}, "_headers": {"retry-after": "7"}})
    server = FakeServer([limited, completion(ANSWER)])
    assert ask(video, "Q?", OPTIONS, model=served(server, sleeps, max_backoff=30)).answer == "B"
    assert sleeps == [7.0]


def test_retries_are_bounded_and_the_error_says_what_to_do(video):
    sleeps: list[float] = []
    server = FakeServer([refused()] * 3)
    with pytest.raises(ServedModelError) as caught:
        ask(video, "Q?", OPTIONS, model=served(server, sleeps, max_retries=2))
    message = str(caught.value)
    assert "cannot reach the model server at http://127.0.0.1:9/v1 (3 tries" in message
    assert "--base-url" in message and len(sleeps) == 2 and caught.value.status is None


def test_a_timeout_says_to_give_it_longer(video):
    server = FakeServer([timed_out()])
    with pytest.raises(ServedModelError, match=r"did not reply within 300s.*--timeout"):
        ask(video, "Q?", OPTIONS, model=served(server, max_retries=0))


@pytest.mark.parametrize(
    ("status", "body", "hint"),
    [
        (404, {"error": {"message": "The model `x` does not exist."}}, "pass --model"),
        (400, {"detail": "Server is pinned to 'a'; requested 'served-model'."}, "(it lists: "),
        (
            400,
            {"error": {"message": "At most 16 image(s) may be provided in one request."}},
            "--limit-mm-per-prompt",
        ),
        (
            400,
            {"error": {"message": "This model's maximum context length is 8192 tokens."}},
            "--max-model-len",
        ),
        (401, {"error": {"message": "Incorrect API key provided"}}, "check the API key"),
        (404, {"detail": "Not Found"}, "v1/chat/completions does not exist: check --base-url"),
        (422, {"detail": "Unexpected fields in the request: {'foo'}"}, "rejected the request"),
    ],
)
def test_errors_retrying_cannot_fix_are_not_retried(video, status, body, hint):
    sleeps: list[float] = []
    server = FakeServer([(status, body)], models=("served-model", "other"))
    with pytest.raises(ServedModelError) as caught:
        ask(video, "Q?", OPTIONS, model=served(server, sleeps))
    assert hint in str(caught.value) and f"answered {status}" in str(caught.value)
    assert caught.value.status == status and sleeps == [] and len(server.bodies) == 1


def test_the_key_is_only_in_the_authorization_header(video):
    # a proxy that echoes the request's credentials back in its error
    server = FakeServer([(400, {"error": {"message": f"bad request from Bearer {KEY}"}})])
    lm = served(server)
    with pytest.raises(ServedModelError) as caught:
        ask(video, "Q?", OPTIONS, model=lm)
    assert server.headers[0]["authorization"] == f"Bearer {KEY}"
    assert KEY not in str(caught.value) and "***" in str(caught.value)
    assert KEY not in repr(lm) and KEY not in str(server.bodies)


def test_check_fails_on_an_unreachable_server_or_a_refused_key_only():
    with pytest.raises(ServedModelError, match="cannot reach"):
        served(FakeServer([], down=True), max_retries=0).check()
    served(FakeServer([])).check()  # lists its models
    served(FakeServer([], models=None)).check()  # no model list: the first request will tell


def test_reasoning_field_is_put_back_closed_only_when_the_reply_went_on() -> None:
    """A server's reasoning parser moves the think block out of the content. A closed block comes
    back with its ``</think>``; one the model never closed comes back unclosed, without the
    end-of-turn text the parser left in it (the in-process backend's reply for the same tokens)."""
    from types import SimpleNamespace

    from vmtr.models.openai_api import reply_text

    closed = SimpleNamespace(content="<answer>B</answer>", reasoning_content="Seen: red.")
    assert reply_text(closed) == "<think>Seen: red.</think><answer>B</answer>"
    unclosed = SimpleNamespace(content="", reasoning_content="Border: frames 3</answer><|im_end|>")
    assert reply_text(unclosed) == "<think>Border: frames 3</answer>"
    plain = SimpleNamespace(content="<think>x</think><answer>A</answer>", model_extra={})
    assert reply_text(plain) == "<think>x</think><answer>A</answer>"
