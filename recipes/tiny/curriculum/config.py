"""Everything one curriculum stage can change; the defaults are the bundled tiny model's."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, Field

from recipes.tiny.curriculum.drills import CaptionLayout
from recipes.tiny.curriculum.episodes import AnswerForm, NeedleGuess
from vmtr.models.gta import AttentionChoice


class CurriculumConfig(AttentionChoice):
    """One stage: data, model, optimiser, the mix of examples and the auxiliary losses."""

    model_config = ConfigDict(extra="forbid")

    data: list[Path] = Field(description="Folders holding annotations.json (vmtr synth output).")
    out: Path = Field(description="Run folder: checkpoints, logs, frame cache, final model.")
    model: str = Field(
        "tiny-init",
        description="`tiny-init` (a fresh random tiny model), `tiny` (the bundled one) or a "
        "checkpoint folder.",
    )
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step.")
    micro_batch: int = Field(1, ge=1, description="Examples per forward pass (padded together).")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup: int = Field(100, ge=0, description="Linear warmup steps before the cosine decay.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a share of lr.")
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    save_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_items: int = Field(40, ge=0, description="Items held out of training, asked at the end.")
    eval_every: int = Field(
        0,
        ge=0,
        description="Also ask the held-out items every N steps (0: only at the end) and keep "
        "the most accurate model so far in best/: small models trained briefly peak and dip.",
    )
    single_turn_share: float = Field(
        0.5, ge=0, le=1, description="Share of one-turn trajectories (half 16, half 32 frames)."
    )
    retrieve_width: tuple[int, int] = Field(
        (8, 16), description="Random retrieve ranges span this many pool frames (min, max)."
    )
    retrieve_block: int = Field(
        0,
        ge=0,
        description="If > 0, retrieve a random aligned block of this many pool frames instead "
        "(starts at multiples of it): fewer distinct ranges, which greedy decoding reproduces "
        "well-formed.",
    )
    retrieve_labels: bool = Field(
        False,
        description="Retrieve between two first-turn frame labels picked at random "
        "(`label_range`) instead of a random range or block, or with `retrieve_block` > 0 the "
        "block of that many frames from one label: RL then only has to learn which label to "
        "copy.",
    )
    retrieve_again: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of protocol episodes that, still without the evidence after a "
        "retrieve, retrieve again while turns remain; the others answer then, as a guess. "
        "Below 1, most episodes retrieve once and answer on the next turn.",
    )
    retrieve_aim: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of protocol episodes whose retrieves aim from the border frames "
        "they named (`aimed_range`) instead of the random rule; their range digits carry "
        "the content weight. 0 leaves all aiming to RL.",
    )
    caption_share: float = Field(
        0.0, ge=0, le=1, description="Share of examples that are short reading drills (captions)."
    )
    caption_frames: int = Field(8, ge=1, description="Consecutive frames in a reading drill.")
    caption_layout: CaptionLayout = Field(
        "window",
        description="Which frames a reading drill shows (see `CaptionLayout`); `first-turn` "
        "ignores caption_frames.",
    )
    answer_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of examples that are text-only answer drills (`plan_answer_drill`): "
        "the answer that matches a scripted reading, with loss on the answer alone.",
    )
    caption_content_loss: bool = Field(
        False,
        description="Reading drills carry loss only on what was read (colours, shapes, digits, "
        "letters; see `content_token_ids`).",
    )
    answer_form: AnswerForm = Field(
        "letter", description="What replies put inside <answer> (see `AnswerForm`)."
    )
    needle_guess: NeedleGuess = Field(
        "random", description="How needle-form replies guess (see `NeedleGuess`)."
    )
    content_weight: float = Field(
        1.0,
        ge=1.0,
        description="Loss weight of the content tokens (colours, shapes, digits, letters) in "
        "whole-reply examples, outside <retrieve> ranges, whose digits are random: > 1 keeps the "
        "few tokens that need the image from drowning among the format tokens.",
    )
    schedule_steps: int | None = Field(
        None,
        ge=1,
        description="Steps the warmup + cosine schedule spans (default: steps); larger stops "
        "the run part-way through a longer schedule.",
    )
    tiny_sizes: dict[str, int] = Field(
        default_factory=lambda: {"vision_depth": 4, "vision_hidden": 128},
        description="tiny_config sizes for a fresh tiny model.",
    )
    tiny_vocab: int = Field(1024, ge=300)
    max_new_tokens: int = Field(96, ge=8, description="Reply length limit in the held-out check.")
    vision_aux_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of the auxiliary needle loss on the vision tower's merged tokens "
        "(`vision_aux`): each token's cell is classed by the needle colour and shape covering "
        "it, or none. 0 turns it off.",
    )
