"""Chunked prefill, bi-level KV and the long-context agent mode, on a small random Qwen2.5-VL."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLForConditionalGeneration

from vmtr import protocol
from vmtr.agent.long_context import (
    ask_long,
    ask_with_encoder,
    build_long_graph,
    dense_message,
    first_message,
)
from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.cache_names import cache_kwargs
from vmtr.models.kv_sparse import (
    DenseStore,
    SparseSettings,
    attention_relevance,
    chunk_mask,
    chunked_prefill,
    plan_chunks,
    pool_counts,
    pool_frames,
    top_chunks,
)
from vmtr.models.qwen import QwenVideoLM
from vmtr.models.scripted import ScriptedVideoLM
from vmtr.models.sparse_lm import SparseVideoLM, split_at_images, strip_controls
from vmtr.models.tiny import build_processor, build_tokenizer, tiny_config

N_FRAMES = 7
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=6)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    config = tiny_config(tokenizer, hidden=64, layers=2, heads=4, kv_heads=2, vision_depth=1)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    settings = ModelSettings(model="random", device="cpu", max_pixels=112 * 112)
    return QwenVideoLM(model, processor, settings)


def _images(indices):
    return [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (112, 112, 3), dtype=np.uint8))
        for i in indices
    ]


def _encoded(lm: QwenVideoLM, n: int = N_FRAMES, frames_per_label: int | None = None):
    """Turn 1 of the Video-MTR protocol, or with ``frames_per_label`` of the long mode."""
    settings = ProtocolSettings(pool_size=n, first_turn_frames=n)
    question, options, times = "Which colour was the shape?", ["A. red", "B. blue"], range(n)
    if frames_per_label is None:
        first = protocol.user_message(
            turn=1,
            frames=list(range(n)),
            timestamps=[float(i) for i in times],
            question=question,
            options=options,
            pool_size=n,
            settings=settings,
        )
    else:
        first = first_message(
            [float(i) for i in times], question, options, settings, None, frames_per_label
        )
    messages = [protocol.system_message(settings), first]
    text = lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = dict(lm.processor(text=[text], images=_images(range(n)), return_tensors="pt"))
    positions, _ = lm.model.model.get_rope_index(
        encoded["input_ids"],
        mm_token_type_ids=encoded["mm_token_type_ids"],
        image_grid_thw=encoded["image_grid_thw"],
    )
    return messages, encoded, positions


def _tail_logits(lm, video, encoded, positions, dense):
    end = video.layout.end
    cache = video.build_cache(dense, lm.model.config)
    with torch.no_grad():
        return lm.model(
            input_ids=encoded["input_ids"][:, end:],
            mm_token_type_ids=encoded["mm_token_type_ids"][:, end:],
            position_ids=positions[:, :, end:],
            **cache_kwargs(cache),
            use_cache=True,
        ).logits


def test_chunk_mask_is_open_on_context_and_causal_inside():
    mask = chunk_mask(2, 3, torch.float32, "cpu")[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_pool_frames_averages_two_by_two_blocks():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 16, 1)  # one 4x4 frame, raster order
    pooled = pool_frames(x, [(4, 4)], 4).flatten().tolist()
    assert pooled == [2.5, 4.5, 10.5, 12.5]  # e.g. mean(0, 1, 4, 5) = 2.5
    odd = pool_frames(torch.ones(1, 1, 6, 1), [(1, 6)], 4)  # a 1x6 row: runs of 4 then 2
    assert odd.shape[2] == 2 and torch.allclose(odd, torch.ones_like(odd))


def test_pooled_keys_count_for_the_tokens_they_average(tiny):
    assert pool_counts([(4, 4)], 4).tolist() == [4.0] * 4
    assert pool_counts([(3, 3)], 4).tolist() == [4.0, 2.0, 2.0, 1.0]  # 2x2 blocks, ceil mode
    _, encoded, positions = _encoded(tiny)
    video = chunked_prefill(tiny.model, encoded, positions, SparseSettings(frames_per_chunk=2))
    bias = video.key_bias(())
    assert bias.shape[0] == video.build_cache((), tiny.model.config).get_seq_length()
    assert torch.isclose(bias.exp().sum() - (bias == 0).sum(), torch.tensor(N_FRAMES * 16.0))
    assert not video.key_bias(range(len(video.chunks))).any()


def test_plan_chunks_owns_labels_and_covers_the_video(tiny):
    _, encoded, _ = _encoded(tiny)
    config = tiny.model.config
    markers = (config.vision_start_token_id, config.vision_end_token_id)
    ids = encoded["input_ids"][0]
    layout = plan_chunks(
        encoded["mm_token_type_ids"][0], encoded["image_grid_thw"], 2, 3, ids, markers
    )
    assert [c.frames for c in layout.chunks] == [(0, 1, 2), (3, 4, 5), (6,)]
    # a chunk runs from the end of the previous chunk's last image to the end of its own last
    # image: it holds the end markers of the images before its last and its own start markers
    # (chunk 0 starts inside frame 0's image, the tail holds frame 6's end marker)
    assert [int(c.marker.sum()) for c in layout.chunks] == [4, 6, 2]
    for before, after in zip(layout.chunks, layout.chunks[1:], strict=False):
        assert before.end == after.start
    assert int(sum(c.visual.sum() for c in layout.chunks)) == int(
        (encoded["mm_token_type_ids"] == 1).sum()
    )


GROUPED = 10  # frames in the grouped-label tests: groups 0-3, 4-7, 8-9


def _labels(tokenizer, ids: torch.Tensor) -> list[str]:
    return re.findall(r"frame_idx:[\d-]+", tokenizer.decode(ids))


@pytest.mark.parametrize("per_chunk", [4, 8, 3])
def test_group_labels_are_owned_by_the_chunk_of_their_first_frame(tiny, per_chunk):
    _, encoded, _ = _encoded(tiny, GROUPED, frames_per_label=4)
    tokenizer = tiny.processor.tokenizer
    ids = encoded["input_ids"][0]
    assert _labels(tokenizer, ids) == ["frame_idx:0-3", "frame_idx:4-7", "frame_idx:8-9"]
    config = tiny.model.config
    markers = (config.vision_start_token_id, config.vision_end_token_id)
    layout = plan_chunks(
        encoded["mm_token_type_ids"][0], encoded["image_grid_thw"], 2, per_chunk, ids, markers
    )
    # chunk 0 starts at frame 0's first image token, so the first label sits in the prefix
    assert _labels(tokenizer, ids[: layout.prefix_end]) == ["frame_idx:0-3"]
    for chunk in layout.chunks:
        text = ~(chunk.visual | chunk.marker)
        owned = _labels(tokenizer, ids[chunk.start : chunk.end][text])
        firsts = [f for f in (4, 8) if f in chunk.frames]  # first frames of groups 1 and 2
        assert owned == [f"frame_idx:{f}-{min(f + 3, GROUPED - 1)}" for f in firsts]


def test_group_labels_shrink_the_pooled_cache(tiny):
    sizes = {}
    for per_label in (1, 4):
        _, encoded, positions = _encoded(tiny, GROUPED, frames_per_label=per_label)
        settings = SparseSettings(frames_per_chunk=4, window=1)
        video = chunked_prefill(tiny.model, encoded, positions, settings)
        sizes[per_label] = (video.kv_bytes(()), video.dense_bytes())
        stamps = sum(int(c.text[0][0].shape[-2]) for c in video.chunks)
        # the labels and new lines the chunks keep whole (frame 0's label is in the prefix)
        kept = "".join(f"\nframe_idx:{i}, " for i in range(1, GROUPED))
        if per_label == 4:
            kept = "\nframe_idx:4-7, \nframe_idx:8-9, "
        assert stamps == len(tiny.processor.tokenizer(kept)["input_ids"])
    assert sizes[4][0] < sizes[1][0] and sizes[4][1] < sizes[1][1]
    assert sizes[4][0] / sizes[4][1] < sizes[1][0] / sizes[1][1]


def test_split_at_images_tokenizes_like_the_whole_prompt(tiny):
    messages, encoded, _ = _encoded(tiny)
    text = tiny.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    pieces = split_at_images(text, N_FRAMES, 3)
    assert "".join(p for p, _ in pieces) == text
    assert [span for _, span in pieces] == [(0, 3), (3, 6), (6, 7), (7, 7)]
    images = _images(range(N_FRAMES))
    ids = [
        tiny.processor(text=[p], images=images[a:b] or None, return_tensors="pt")["input_ids"]
        for p, (a, b) in pieces
    ]
    assert torch.equal(torch.cat(ids, dim=1), encoded["input_ids"])


@pytest.mark.parametrize(
    ("n", "per_label", "per_chunk"), [(N_FRAMES, None, 2), (GROUPED, 4, 4), (GROUPED, 4, 3)]
)
def test_chunked_prefill_with_full_window_equals_dense(tiny, n, per_label, per_chunk):
    _, encoded, positions = _encoded(tiny, n, frames_per_label=per_label)
    with torch.no_grad():
        dense = tiny.model(**encoded, position_ids=positions).logits
    settings = SparseSettings(frames_per_chunk=per_chunk, window=n, pool_factor=4)
    video = chunked_prefill(tiny.model, encoded, positions, settings)
    logits = _tail_logits(tiny, video, encoded, positions, range(len(video.chunks)))
    end = video.layout.end
    assert torch.allclose(logits, dense[:, end:], atol=1e-4, rtol=1e-4)
    # A short window really drops context: the same tail then sees other keys.
    narrow = chunked_prefill(
        tiny.model, encoded, positions, settings.model_copy(update={"window": 0})
    )
    other = _tail_logits(tiny, narrow, encoded, positions, range(len(narrow.chunks)))
    assert not torch.allclose(other, dense[:, end:], atol=1e-4)


def test_pooled_cache_is_smaller_and_decodes(tiny, tmp_path):
    _, encoded, positions = _encoded(tiny)
    settings = SparseSettings(frames_per_chunk=2, window=1, pool_factor=4, offload="disk")
    store = DenseStore("disk", tmp_path)
    video = chunked_prefill(tiny.model, encoded, positions, settings, store=store)
    assert len(list(tmp_path.glob("chunk*.pt"))) == len(video.chunks)
    pooled = video.kv_bytes(())
    per_token = 2 * 2 * 2 * 16 * 4  # layers, K and V, kv heads, head dim, float32 bytes
    assert video.dense_bytes() - pooled == (N_FRAMES * 16 * 3 // 4) * per_token  # 16 -> 4 a frame
    assert pooled < video.kv_bytes([0]) < video.dense_bytes()
    logits = _tail_logits(tiny, video, encoded, positions, ())
    assert torch.isfinite(logits).all()
    tail = {
        "input_ids": encoded["input_ids"][:, video.layout.end :],
        "mm_token_type_ids": encoded["mm_token_type_ids"][:, video.layout.end :],
        "position_ids": positions[:, :, video.layout.end :],
    }
    scores = attention_relevance(tiny.model, video, tail)
    assert len(scores) == len(video.chunks) and 0 < sum(scores) <= 1 + 1e-5
    assert top_chunks([0.1, 0.5, 0.2, 0.4], 2) == [1, 3]
    assert top_chunks([0.1, 0.5, 0.2, 0.4], 1, among=[0, 2]) == [2]


def _two_turns(lm, messages, new_images: bool):
    first = lm.generate(messages, _images, settings=GREEDY, session="s")
    settings = ProtocolSettings(pool_size=N_FRAMES + 8, first_turn_frames=N_FRAMES)
    if new_images:  # the default protocol: a retrieve brings new images
        follow_up = protocol.user_message(
            turn=2,
            frames=[N_FRAMES, N_FRAMES + 1, N_FRAMES + 2],
            timestamps=[20.0, 21.0, 22.0],
            question="Which colour?",
            options=["A. red", "B. blue"],
            pool_size=N_FRAMES + 8,
            settings=settings,
        )
    else:  # the long-context mode: a retrieve makes chunks dense
        follow_up = dense_message(
            2, 0, N_FRAMES - 1, "Which colour?", ["A. red", "B. blue"], N_FRAMES, settings
        )
    follow = [*messages, protocol.assistant_message(first.text), follow_up]
    second = lm.generate(follow, _images, settings=GREEDY, session="s")
    lm.end_session("s")
    return first.token_ids, second.token_ids


@pytest.mark.parametrize("per_label", [None, 4])
@pytest.mark.parametrize("new_images", [False, True])
def test_sparse_lm_all_dense_matches_dense_backend_over_two_turns(tiny, new_images, per_label):
    messages, _, _ = _encoded(tiny, frames_per_label=per_label)
    # attention relevance with top_k above the chunk count makes every chunk dense on turn 1
    everything = SparseSettings(
        frames_per_chunk=2, window=N_FRAMES, relevance="attention", top_k=99
    )
    sparse = SparseVideoLM(tiny, everything)
    got = _two_turns(sparse, messages, new_images)
    assert sum(map(len, got)) > 4  # enough tokens decoded for the comparison to mean something
    assert got == _two_turns(_DenseAdapter(tiny), messages, new_images)


class _DenseAdapter:
    """The plain backend fed what the long graph feeds it (control parts stripped)."""

    def __init__(self, lm: QwenVideoLM) -> None:
        self.lm = lm

    def generate(self, messages, frames, **kwargs):
        return self.lm.generate(strip_controls(messages), frames, **kwargs)

    def end_session(self, session):
        self.lm.end_session(session)


@pytest.mark.parametrize("relevance", ["retrieve", "attention"])
def test_retrieve_makes_chunks_dense(tiny, relevance):
    messages, _, _ = _encoded(tiny)
    lm = SparseVideoLM(
        tiny, SparseSettings(frames_per_chunk=2, window=1, relevance=relevance, top_k=1)
    )
    lm.generate(messages, _images, settings=GREEDY, session="r")
    first = dict(lm.last_stats)
    assert len(first["dense_chunks"]) == (0 if relevance == "retrieve" else 1)
    settings = ProtocolSettings(pool_size=N_FRAMES, first_turn_frames=N_FRAMES)
    follow = [
        *messages,
        protocol.assistant_message("<think>x</think><retrieve>4, 5</retrieve>"),
        dense_message(2, 4, 5, "Which colour?", ["A. red", "B. blue"], N_FRAMES, settings),
    ]
    reply = lm.generate(follow, _images, settings=GREEDY, session="r")
    assert 2 in lm.last_stats["dense_chunks"]  # frames 4 and 5 form chunk 2
    assert lm.last_stats["kv_bytes"] > first["kv_bytes"] or relevance == "attention"
    assert lm.last_stats["kv_bytes"] < lm.last_stats["dense_kv_bytes"]
    assert reply.token_ids
    lm.end_session("r")


@pytest.mark.parametrize(
    ("per_label", "labels"),
    [
        (None, ["0-3", "4-7", "8-11"]),
        (5, ["0-4", "5-9", "10-11"]),
        (1, [str(i) for i in range(12)]),
    ],
)
def test_long_graph_retrieve_sends_no_images(make_video, per_label, labels):
    video = make_video(seconds=3.0, fps=10.0)
    lm = ScriptedVideoLM(
        ["<think>look</think><retrieve>3, 9</retrieve>", "<think>ok</think><answer>A</answer>"]
    )
    group = {} if per_label is None else {"frames_per_label": per_label}
    graph = build_long_graph(lm, frames=12, **group)
    state = graph.invoke(
        {"video": str(video), "question": "What?", "options": ["red", "blue"]},
        {"recursion_limit": 30},
    )
    assert state["answer"] == "A"
    assert lm.frames_seen == [list(range(12)), []]
    turn1 = "".join(p.get("text", "") for p in lm.calls[0][-1]["content"])
    assert re.findall(r"frame_idx:([\d-]+)", turn1) == labels
    assert "Frames 3 to 9 are now shown in full detail." in lm.calls[1][-1]["content"][0]["text"]


def test_long_context_mode_end_to_end(tiny, make_video):
    video = make_video(seconds=3.0, fps=10.0)
    result = ask_with_encoder(
        video,
        "What colour?",
        ["red", "blue"],
        encoder="kv-sparse",
        frames=10,
        model=tiny,
        max_turns=2,
        temperature=0.0,
        max_new_tokens=4,
    )
    assert len(result.pool) == 10 and result.turns
    assert result.turns[0]["frames"] == list(range(10))
    assert result.turns[0]["kv"]["kv_bytes"] < result.turns[0]["kv"]["dense_kv_bytes"]
    baseline = ask_long(
        video,
        "What colour?",
        ["red", "blue"],
        frames=10,
        model=tiny,
        dense_baseline=True,
        max_turns=1,
        temperature=0.0,
        max_new_tokens=4,
    )
    assert baseline.turns and "kv" not in baseline.turns[0]
