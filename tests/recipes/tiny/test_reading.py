"""Teacher-forced reading accuracy scores exactly the colour and shape words of the replies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from recipes.tiny.curriculum import reading, trainer, weights
from vmtr.eval.datasets import load_video_mtr_json
from vmtr.eval.synthetic import COLOURS, SyntheticSettings, generate
from vmtr.models.tiny import build_tiny


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("synth")
    generate(data, SyntheticSettings(n_items=3, seed=11, minutes=0.5))
    items = load_video_mtr_json(data / "annotations.json")
    folder = build_tiny(
        tmp_path_factory.mktemp("tiny"), seed=0, extra_texts=trainer.corpus_texts(items)
    )
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    return items, processor, model, tmp_path_factory.mktemp("cache")


def test_word_ids_maps_single_token_words(setup) -> None:
    _, processor, _, _ = setup
    ids = weights.word_ids(processor.tokenizer, list(COLOURS))
    assert set(ids.values()) == set(COLOURS)


def test_a_model_that_always_says_red_scores_the_share_of_red(setup, monkeypatch) -> None:
    items, processor, model, cache = setup
    red = processor.tokenizer(" red", add_special_tokens=False)["input_ids"][0]

    class SaysRed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to report

        def forward(self, input_ids, **_):
            logits = torch.zeros(1, input_ids.shape[1], model.config.text_config.vocab_size)
            logits[..., red] = 1.0
            return type("Out", (), {"logits": logits})()

    budget = {"max_pixels": 112 * 112, "min_pixels": 56 * 56, "factor": 28}
    result = reading.reading_accuracy(SaysRed(), processor, items, Path(cache), budget=budget)
    colours = [n["colour"] for item in items for n in item.extra["needles"]]
    assert result["needle_words"] > 0
    assert result["shape_accuracy"] == 0.0
    if "red" not in colours:
        assert result["colour_accuracy"] == 0.0
    else:
        assert 0.0 < result["colour_accuracy"] <= 1.0
    real = reading.reading_accuracy(model, processor, items, Path(cache), budget=budget)
    assert real["needle_words"] == result["needle_words"]


def test_reading_positions_name_each_clause(setup) -> None:
    _, processor, _, _ = setup
    tok = processor.tokenizer
    reply = "<think>Border: frames 17 to 21. Seen: frame 34 blue cross.</think><answer>B</answer>"
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    words = [tok.decode([i]) for i in ids]
    found = {}
    for kind, position in reading.reading_positions(ids, reading.reading_marks(tok)):
        found.setdefault(kind, []).append(words[position].strip())
    assert found == {
        "border_first": ["Border"],
        "border_digits": ["1", "7", "2", "1"],
        "seen_first": ["frame"],
        "seen_digits": ["3", "4"],
        "colour": ["blue"],
        "shape": ["cross"],
        "answer": ["B"],
    }


def test_reading_positions_score_a_needle_answer_as_the_answer(setup) -> None:
    _, processor, _, _ = setup
    tok = processor.tokenizer
    reply = "<think>Seen: frame 34 blue cross.</think><answer> blue cross</answer>"
    ids = tok(reply, add_special_tokens=False)["input_ids"]
    words = [tok.decode([i]).strip() for i in ids]
    found = {}
    for kind, position in reading.reading_positions(ids, reading.reading_marks(tok)):
        found.setdefault(kind, []).append(words[position])
    assert found["colour"] == ["blue"]  # the reading's, not the answer's
    assert found["answer"] == ["blue", "cross"]
