"""`vmtr train sft --episodes`: supervised fine-tuning on recorded episodes, for any model.

Read top to bottom: `setup` (model, LoRA, episodes replayed into conversations, held-out split,
optimiser, resume), `train` (batches of conversations, loss on the model's replies only, a
warmup-then-cosine schedule, checkpoints, held-out accuracy through the evaluation runner with
the best model kept), `save`. Episodes come from ``samples.jsonl`` files as `vmtr eval` writes
them; ``only_correct`` keeps the right ones, which makes this rejection-sampling fine-tuning on a
model's own answers, or distillation of a (served, larger) model into a smaller one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field

from vmtr.config import GenerationSettings, ModelSettings, ProtocolSettings
from vmtr.models.adapters import add_lora, load_adapter, save_adapter, save_merged
from vmtr.models.gta import AttentionChoice, apply_gta, gta_settings
from vmtr.models.qwen import QwenVideoLM
from vmtr.policies.conversation import collate, encode_conversation, token_loss
from vmtr.policies.episodes import (
    Conversation,
    EpisodeError,
    conversation_frames,
    read_episodes,
    replay,
)
from vmtr.tools.video import FrameCache


class EpisodeSFTSettings(AttentionChoice):
    """Everything `vmtr train sft --episodes` can change."""

    model_config = ConfigDict(extra="forbid")

    episodes: list[Path]
    out: Path
    model: str = "tiny"
    only_correct: bool = False
    steps: int = Field(100, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-5, gt=0)
    warmup: int = Field(10, ge=0)
    heldout: int = Field(0, ge=0, description="Questions held out and asked every eval_every.")
    eval_every: int = Field(0, ge=0)
    save_every: int = Field(50, ge=1)
    lora_rank: int = Field(0, ge=0)
    quantization: Literal["none", "4bit", "8bit"] = "none"
    seed: int = 0
    protocol: ProtocolSettings = ProtocolSettings()


class EpisodeSFT:
    """setup -> train -> save, with resume."""

    def __init__(self, s: EpisodeSFTSettings, log: Callable[[str], None] = print) -> None:
        self.s, self.log = s, log
        self.step = 0
        self.best: float | None = None

    # -- setup ----------------------------------------------------------------------------------

    def setup(self) -> None:
        torch.manual_seed(self.s.seed)
        episodes = read_episodes(self.s.episodes, only_correct=self.s.only_correct)
        if not episodes:
            kept = "right " if self.s.only_correct else ""
            raise EpisodeError(
                f"no {kept}episodes to train on in {list(map(str, self.s.episodes))}"
            )
        rng = random.Random(self.s.seed)
        rng.shuffle(episodes)
        self.heldout = [e.item for e in episodes[: self.s.heldout]]
        train = episodes[self.s.heldout :] or episodes
        frames = FrameCache(max_frames=2048)
        self.conversations = [replay(e, self.s.protocol, frames) for e in train]
        resume = self.latest_checkpoint()
        lora = self.s.lora_rank > 0
        spec = str(resume) if resume and not lora else self.s.model
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.lm = QwenVideoLM.load(
            ModelSettings(
                model=spec,
                device=device,
                quantization=self.s.quantization,
                dtype="float32" if device == "cpu" else "auto",
            )
        )
        model = self.lm.model
        if self.s.attention == "gta" and resume is None and gta_settings(model) is None:
            if lora or self.s.quantization != "none":
                raise EpisodeError(
                    "--attention gta trains new attention layers in full: drop --lora-rank "
                    "and --quantization"
                )
            apply_gta(model, self.s.gta)
        if lora:
            model = (
                load_adapter(model, resume, trainable=True)
                if resume
                else add_lora(model, self.s.lora_rank)
            )
            self.lm.model = model
        self.frames = frames
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=self.s.lr
        )
        if resume:
            state = torch.load(resume / "trainer_state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.best = state["step"], state.get("best")
            torch.set_rng_state(state["torch_rng"])
        self.log(
            f"{len(self.conversations)} episodes to train on, {len(self.heldout)} held out; "
            f"model {self.s.model}" + (f" (resumed at step {self.step})" if resume else "")
        )

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.s.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        found = [p for p in found if (p / "trainer_state.pt").exists()]
        return found[-1] if found else None

    # -- training ---------------------------------------------------------------------------------

    def encode(self, conversation: Conversation) -> dict[str, torch.Tensor]:
        """The conversation as the model sees it, labels on its replies only."""
        images = conversation_frames(conversation, self.frames, self.lm.pixel_budget)
        return encode_conversation(self.lm.processor, conversation.messages, images)

    def batch_at(self, step: int) -> list[Conversation]:
        """The step's conversations: a fresh shuffle every epoch, the same on resume."""
        per_epoch = max(1, len(self.conversations) // self.s.batch_size)
        epoch, index = divmod(step, per_epoch)
        order = list(range(len(self.conversations)))
        random.Random(self.s.seed * 7919 + epoch).shuffle(order)
        first = (index * self.s.batch_size) % len(order)
        picks = [order[(first + k) % len(order)] for k in range(self.s.batch_size)]
        return [self.conversations[i] for i in picks]

    def lr_at(self, step: int) -> float:
        if step < self.s.warmup:
            return self.s.lr * (step + 1) / self.s.warmup
        progress = (step - self.s.warmup) / max(1, self.s.steps - self.s.warmup)
        return self.s.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def train_step(self) -> float:
        model = self.lm.model
        model.train()
        examples = [self.encode(c) for c in self.batch_at(self.step)]
        batch = collate(examples, self.lm.end_id)
        device = self.lm.device
        inputs = {
            key: batch[key].to(device)
            for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values")
            if key in batch
        }
        if "image_grid_thw" in batch:
            inputs["image_grid_thw"] = batch["image_grid_thw"].to(device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        logits = model(**inputs, use_cache=False).logits
        loss = token_loss(logits, batch["labels"].to(device))
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.optimizer.step()
        model.eval()
        self.step += 1
        return float(loss.detach())

    def train(self, progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict:
        self.s.out.mkdir(parents=True, exist_ok=True)
        log_path = self.s.out / "log.jsonl"
        while self.step < self.s.steps:
            row: dict[str, Any] = {"step": self.step + 1, "loss": self.train_step()}
            row["lr"] = self.lr_at(self.step - 1)
            if self.s.eval_every and self.heldout and self.step % self.s.eval_every == 0:
                row["heldout_accuracy"] = self.evaluate()
                if self.best is None or row["heldout_accuracy"] > self.best:
                    self.best = row["heldout_accuracy"]
                    self.save(self.s.out / "best")
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if progress is not None:
                progress(self.step, self.s.steps, row)
            if self.step % self.s.save_every == 0 or self.step == self.s.steps:
                self.checkpoint()
        final = self.save(self.s.out / "final")
        report = {"steps": self.step, "final": str(final), "best_heldout_accuracy": self.best}
        if self.heldout:
            report["heldout_accuracy"] = self.evaluate()
        (self.s.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report

    def evaluate(self) -> float:
        """Greedy accuracy on the held-out questions, through the evaluation runner."""
        from vmtr.eval.runner import EvalSettings, collect, run

        settings = EvalSettings(
            benchmark="episodes",
            model=ModelSettings(model=f"{self.s.model}@step{self.step}"),
            frames=self.s.protocol.first_turn_frames,
            protocol=self.s.protocol,
            generation=GenerationSettings(temperature=0, max_new_tokens=256),
        )
        folder = self.s.out / "heldout"
        run(self.heldout, settings, folder, self.lm, batch_size=min(8, len(self.heldout)))
        rows = collect(folder, self.heldout, settings.run_key())
        return sum(bool(r.get("correct")) for r in rows) / max(1, len(rows))

    # -- saving -----------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """A loadable model (``--model folder``): merged from a copy when training LoRA."""
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.s.lora_rank > 0:
            save_merged(self.lm.model, tmp, self.lm.processor)
        else:
            self.lm.model.save_pretrained(tmp)
            self.lm.processor.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    def checkpoint(self) -> Path:
        """Weights (the adapter alone for LoRA) + optimiser, step and RNG, for resume."""
        folder = self.s.out / f"checkpoint-{self.step}"
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.s.lora_rank > 0:
            save_adapter(self.lm.model, tmp)
        else:
            self.lm.model.save_pretrained(tmp)
        self.lm.processor.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "step": self.step,
                "best": self.best,
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "trainer_state.pt",
        )
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        for old in sorted(self.s.out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[
            :-2
        ]:
            shutil.rmtree(old, ignore_errors=True)
        return folder
