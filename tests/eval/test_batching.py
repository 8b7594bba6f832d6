"""Micro-batching must not change what the model says: batched greedy == one call at a time."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from vmtr.agent import protocol
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.batching import BatchingVideoLM, generate_batch
from vmtr.models.qwen import QwenVideoLM

GREEDY = GenerationSettings(temperature=0, max_new_tokens=8)


@pytest.fixture(scope="module")
def tiny_lm() -> QwenVideoLM:
    torch.manual_seed(0)
    return QwenVideoLM.load(ModelSettings(model="tiny", device="cpu"))


def _fetch(seed: int):
    def fetch(indices):
        return [
            Image.fromarray(
                np.random.default_rng(seed * 100 + i).integers(
                    0, 255, (56 + 28 * (seed % 2), 84, 3), dtype=np.uint8
                )
            )
            for i in indices
        ]

    return fetch


def _conversation(n_frames: int, question: str, turns: int = 1) -> list[dict]:
    settings = ProtocolSettings(first_turn_frames=max(n_frames, 1), pool_size=16, max_turns=3)
    frames = list(range(n_frames))
    messages = [
        protocol.system_message(settings),
        protocol.user_message(
            turn=1,
            frames=frames,
            timestamps=[float(i) for i in frames],
            question=question,
            options=["A. red", "B. green", "C. blue"],
            pool_size=16,
            settings=settings,
        ),
    ]
    if turns > 1:
        messages += [
            protocol.assistant_message("<think>look</think><retrieve>3, 5</retrieve>"),
            protocol.user_message(
                turn=2,
                frames=[3, 4, 5],
                timestamps=[3.0, 4.0, 5.0],
                question=question,
                options=["A. red", "B. green", "C. blue"],
                pool_size=16,
                settings=settings,
            ),
        ]
    return messages


CASES = [
    (_conversation(2, "What colour is the ball?"), _fetch(1)),
    (_conversation(4, "Which colour appears first in this rather long question text?"), _fetch(2)),
    (_conversation(1, "Colour?", turns=2), _fetch(3)),
    (_conversation(0, "No frames at all: what colour?"), _fetch(4)),
]


def test_batched_greedy_equals_unbatched(tiny_lm: QwenVideoLM) -> None:
    single = [tiny_lm.generate(m, f, settings=GREEDY) for m, f in CASES]
    encodings = []
    for messages, fetch in CASES:
        text = tiny_lm.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        indices = [i for m in messages for i in protocol.frames_in(m)]
        encodings.append(
            tiny_lm.processor(
                text=[text], images=fetch(indices) if indices else None, return_tensors="pt"
            )
        )
    batched = generate_batch(tiny_lm, encodings, GREEDY)
    assert [b.token_ids for b in batched] == [s.token_ids for s in single]
    assert [b.text for b in batched] == [s.text for s in single]
    assert [b.prompt_tokens for b in batched] == [s.prompt_tokens for s in single]


def _two_turns(generate, key: str) -> list:
    """Turn 1 of each case, then turn 2 continuing its own reply, via ``generate``."""
    first = [generate(m, f, f"{key}{i}") for i, (m, f) in enumerate(CASES)]
    second = []
    for i, ((messages, fetch), reply) in enumerate(zip(CASES, first, strict=True)):
        follow = _conversation(3, "Now which colour?")[1]
        follow["content"][0]["text"] = "Turn 2 of 3.\nHere are 3 frames:\n"
        longer = [*messages, protocol.assistant_message(reply.text), follow]
        second.append((longer, fetch, f"{key}{i}"))
    return first, second


def test_wrapper_batches_sessions_like_single_calls(tiny_lm: QwenVideoLM) -> None:
    def single(messages, fetch, session):
        return tiny_lm.generate(messages, fetch, settings=GREEDY, session=session)

    one_first, one_next = _two_turns(single, "one")
    one_second = [single(*args) for args in one_next]
    with BatchingVideoLM(tiny_lm, max_batch=4, max_wait=0.5) as lm:

        def batched(messages, fetch, session):
            return lm.generate(messages, fetch, settings=GREEDY, session=session)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batched, m, f, f"b{i}") for i, (m, f) in enumerate(CASES)]
            many_first = [f.result() for f in futures]
            _, many_next = _two_turns(lambda m, f, s: many_first[int(s[1:])], "b")
            many_second = [f.result() for f in [pool.submit(batched, *a) for a in many_next]]
        assert max(lm.batch_sizes) > 1
    assert [r.token_ids for r in many_first] == [r.token_ids for r in one_first]
    assert [r.token_ids for r in many_second] == [r.token_ids for r in one_second]
    # Turn 2 prefilled only its new message: the episode's cache was kept between turns.
    assert [r.new_prompt_tokens for r in many_second] == [r.new_prompt_tokens for r in one_second]
    assert all(r.new_prompt_tokens < r.prompt_tokens for r in many_second)


def test_runner_batched_equals_one_at_a_time(tiny_lm: QwenVideoLM, tmp_path) -> None:
    from vmtr.eval.datasets import load_synthetic
    from vmtr.eval.runner import EvalSettings, collect, run
    from vmtr.eval.synthetic import SyntheticSettings, generate

    generate(tmp_path / "data", SyntheticSettings(n_items=3, seed=5150, minutes=0.3))
    items = load_synthetic(tmp_path / "data")
    settings = EvalSettings(
        benchmark="synthetic", model=ModelSettings(model="tiny", device="cpu"), generation=GREEDY
    )
    traces = []
    for batch in (1, 3):
        run(items, settings, tmp_path / f"b{batch}", tiny_lm, batch_size=batch)
        samples = collect(tmp_path / f"b{batch}", items, settings.run_key())
        traces.append([[(t["raw"], t["frames"]) for t in s["turns"]] for s in samples])
    assert traces[0] == traces[1] and len(traces[0]) == 3
