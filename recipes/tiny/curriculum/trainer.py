"""One curriculum stage: setup() -> train() -> save(); evaluate() asks the held-out items.

Every step's examples are a pure function of (seed, step): protocol episodes (`episodes`),
reading and answer drills (`drills`) in the configured shares, encoded as the inference backend
encodes them (`vmtr.policies.conversation`), the content tokens weighted (`weights`), with the
auxiliary needle loss on the vision tower when asked (`vision_aux`). A resumed run therefore
sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoConfig, AutoProcessor

from recipes.tiny.curriculum.config import CurriculumConfig
from recipes.tiny.curriculum.drills import answer_only, plan_answer_drill, plan_caption
from recipes.tiny.curriculum.episodes import (
    MULTI_TURN,
    CurriculumError,
    Trajectory,
    describe_seen,
    needles_of,
    pick_settings,
    plan_trajectory,
    retrieve_reply,
    trains_guesses,
)
from recipes.tiny.curriculum.frames import CachedItem, backend_pixel_budget
from recipes.tiny.curriculum.heldout import evaluate_items
from recipes.tiny.curriculum.reading import reading_accuracy, reading_supported
from recipes.tiny.curriculum.vision_aux import NeedleHeads, capture_merged_tokens, example_labels
from recipes.tiny.curriculum.weights import content_token_ids, content_weights
from vmtr.config import ModelSettings, ProtocolSettings
from vmtr.eval.datasets import QAItem, load_video_mtr_json
from vmtr.eval.synthetic import COLOURS, SHAPES
from vmtr.models.gta import gta_settings, save_as_gta
from vmtr.models.qwen import QwenVideoLM, resolve_model_path
from vmtr.models.tiny import build_tiny
from vmtr.models.vlm import ModelLoadError
from vmtr.models.weights import load_pretrained
from vmtr.policies.conversation import collate, encode_conversation, token_loss
from vmtr.policies.tags import single_token, tag_interior

AUX_KEYS = ("aux_colour", "aux_shape")
"""The auxiliary needle labels, one per merged visual token, batched like the images."""


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warmup then cosine decay to ``floor`` (a share of the peak)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def corpus_texts(items: Sequence[QAItem], n: int = 300, seed: int = 0) -> list[str]:
    """Questions, options and scripted replies of some items, for `build_tiny`'s tokenizer."""
    rng = random.Random(seed)
    texts: list[str] = []
    for item in rng.sample(list(items), min(n, len(items))):
        texts.append(item.question)
        texts.extend(item.options)
        seen = {x["pool_index"] for x in needles_of(item)}
        described = describe_seen(item, seen)
        note = " Guessing." if rng.random() < 0.3 else ""
        texts.append(f"<think>{described}{note}</think><answer>{item.answer or 'A'}</answer>")
        texts.append(retrieve_reply(describe_seen(item, set(range(2, 40, 3))), 3, 17))
    return texts


class Curriculum:
    """setup() -> train() -> save(); evaluate() asks held-out items through the real agent."""

    def __init__(self, config: CurriculumConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.log = log
        self.step = 0

    # -- setup ----------------------------------------------------------------------------------

    def setup(self, resume: bool = False) -> None:
        """Load items and frames, build or load the model, the optimizer and the schedule."""
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        items = self._load_items()
        rng = random.Random(cfg.seed)
        rng.shuffle(items)
        if cfg.eval_items >= len(items):
            raise CurriculumError(
                f"{len(items)} items cannot spare {cfg.eval_items} for evaluation"
            )
        self.eval_items = items[: cfg.eval_items]
        train_items = items[cfg.eval_items :]

        checkpoint = self.last_checkpoint() if resume else None
        if resume and checkpoint is None:
            raise CurriculumError(f"--resume: no checkpoint under {cfg.out / 'checkpoints'}")
        source = checkpoint or self._initial_model(train_items)
        torch.manual_seed(cfg.seed)
        self.processor = AutoProcessor.from_pretrained(source)
        model = load_pretrained(source, dtype=torch.float32)  # GTA checkpoints stay GTA
        self.budget = backend_pixel_budget(model, self.processor)
        self.content_ids = content_token_ids(self.processor.tokenizer)
        tok = self.processor.tokenizer
        self.answer_tags = [single_token(tok, t) for t in ("<answer>", "</answer>")]
        if cfg.answer_share > 0 and None in self.answer_tags:
            raise CurriculumError(
                "answer drills keep the loss on the tokens between <answer> and </answer>, "
                "which needs both tags to be single tokens; this tokenizer splits them"
            )
        self.items = self._cache_frames(train_items)
        self.heads = self._needle_heads(model, source)

        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": rest, "weight_decay": 0},
        ]
        if self.heads is not None:
            groups.append({"params": list(self.heads.parameters()), "weight_decay": 0})
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, cfg.schedule_steps or cfg.steps, cfg.warmup, cfg.min_lr_ratio),
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler
        )
        if checkpoint is not None:
            state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self.log(f"resumed from {checkpoint} at step {self.step}")
        n_params = sum(p.numel() for p in model.parameters())
        self.log(
            f"{len(self.items)} training items, {len(self.eval_items)} held out; "
            f"model {n_params / 1e6:.2f} M parameters from {source}"
        )

    def _load_items(self) -> list[QAItem]:
        items: list[QAItem] = []
        self.frame_px: dict[str, int] = {}  # item id -> the needle boxes' pixel space
        for folder in self.cfg.data:
            path = folder / "annotations.json" if folder.is_dir() else folder
            if not path.exists():
                raise CurriculumError(
                    f"{folder}: no annotations.json (generate one with `vmtr synth`)"
                )
            loaded = load_video_mtr_json(path)
            settings = path.parent / "settings.json"
            if self.cfg.vision_aux_weight > 0:
                if not settings.exists():
                    raise CurriculumError(
                        f"{folder}: no settings.json, which the auxiliary vision loss needs"
                    )
                size = int(json.loads(settings.read_text())["frame_size"])
                self.frame_px.update((item.id, size) for item in loaded)
            items.extend(loaded)
        if not items:
            raise CurriculumError("the training data holds no items")
        for item in items[:1]:
            needles_of(item)
        return items

    def _initial_model(self, items: Sequence[QAItem]) -> Path:
        """The starting checkpoint, switched to fresh GTA attention when asked
        (``attention="gta"``; a checkpoint that is GTA already stays as it is)."""
        source = self._starting_model(items)
        if self.cfg.attention != "gta" or gta_settings(AutoConfig.from_pretrained(source)):
            return source
        target = self.cfg.out / "init-gta"
        if not (target / "config.json").exists():
            save_as_gta(source, target, self.cfg.gta, seed=self.cfg.seed)
        return target

    def _starting_model(self, items: Sequence[QAItem]) -> Path:
        """A fresh random tiny model (``tiny-init``, so the recipe reproduces from scratch), or
        the given checkpoint (``tiny``: the bundled model)."""
        if self.cfg.model != "tiny-init":
            try:
                path = Path(resolve_model_path(self.cfg.model))
            except ModelLoadError as err:
                raise CurriculumError(str(err)) from err
            if not (path / "config.json").exists():
                raise CurriculumError(f"{self.cfg.model}: not a checkpoint folder (no config.json)")
            return path
        init = self.cfg.out / "init"
        if not (init / "config.json").exists():
            build_tiny(
                init,
                seed=self.cfg.seed,
                extra_texts=corpus_texts(items, seed=self.cfg.seed),
                vocab_size=self.cfg.tiny_vocab,
                **self.cfg.tiny_sizes,
            )
        return init

    def _needle_heads(self, model: Any, source: Path) -> NeedleHeads | None:
        """The auxiliary vision heads (`vision_aux`), when asked for; a source checkpoint that
        trained them passes them on."""
        if self.cfg.vision_aux_weight <= 0:
            return None
        hidden = model.config.vision_config.out_hidden_size
        heads = NeedleHeads(hidden, len(COLOURS), len(SHAPES))
        state_file = Path(source) / "trainer_state.pt"
        if state_file.exists():
            state = torch.load(state_file, weights_only=False)
            if "needle_heads" in state:
                # (heads saved beside others, such as frame-level ones, load what they share)
                heads.load_state_dict(state["needle_heads"], strict=False)
        return heads.to(self.accelerator.device)

    def _cache_frames(self, items: Sequence[QAItem]) -> list[CachedItem]:
        cache_dir = self.cfg.out / "frames"
        cache_dir.mkdir(parents=True, exist_ok=True)
        return [CachedItem(item, cache_dir, self.budget) for item in items]

    # -- data -----------------------------------------------------------------------------------

    def batch_at(self, step: int) -> tuple[list[dict[str, torch.Tensor]], list[Trajectory]]:
        """The examples of ``step``, encoded: a pure function of (seed, step), so a resumed run
        sees the same data."""
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1_000_003 + step)
        examples, trajectories = [], []
        for _ in range(cfg.batch_size):
            cached = self.items[rng.randrange(len(self.items))]
            only = None
            # (no draw when off, so runs without answer drills keep their data stream)
            answer_drill = cfg.answer_share > 0 and rng.random() < cfg.answer_share
            if answer_drill:
                traj = plan_answer_drill(cached.item, cfg.answer_form)
            elif rng.random() < cfg.caption_share:
                traj = plan_caption(
                    cached.item,
                    cached.pool,
                    cfg.caption_frames,
                    rng,
                    cfg.answer_form,
                    cfg.caption_layout,
                )
                if cfg.caption_content_loss:
                    only = self.content_ids
            else:
                settings = pick_settings(rng, cfg.single_turn_share)
                # (no draw when off, so runs without aiming keep their data stream)
                aim = cfg.retrieve_aim > 0 and rng.random() < cfg.retrieve_aim
                traj = plan_trajectory(
                    cached.item,
                    cached.pool,
                    settings,
                    rng,
                    cfg.retrieve_width,
                    cfg.retrieve_block,
                    cfg.answer_form,
                    cfg.needle_guess,
                    cfg.retrieve_labels,
                    aim,
                    cfg.retrieve_again,
                )
            # guesses carry loss only as needle-form random letters (`trains_guesses`)
            trained = trains_guesses(cfg.answer_form, cfg.needle_guess)
            masked = None if trained else traj.guesses
            example = encode_conversation(
                self.processor, traj.messages, cached.images(traj.frames), masked, only
            )
            if answer_drill:
                example["labels"] = answer_only(
                    example["input_ids"],
                    example["labels"],
                    *self.answer_tags,
                    with_close=cfg.answer_form == "needle",
                )
            if self.heads is not None and traj.frames:
                example.update(self._aux_labels(cached, traj, example))
            example["loss_weights"] = content_weights(
                example["input_ids"],
                example["labels"],
                self.content_ids,
                cfg.content_weight if only is None else 1.0,
                tag_interior(
                    self.processor.tokenizer, example["input_ids"], "<retrieve>", "</retrieve>"
                ),
                traj.aimed,
            )
            examples.append(example)
            cached.release()
            trajectories.append(traj)
        return examples, trajectories

    def _aux_labels(
        self, cached: CachedItem, traj: Trajectory, example: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The needle class of every merged visual token of the example's images."""
        colour, shape = example_labels(
            needles_of(cached.item),
            traj.frames,
            example["image_grid_thw"],
            self.processor.image_processor.merge_size,
            self.frame_px[cached.item.id],
            list(COLOURS),
            SHAPES,
        )
        return {"aux_colour": colour, "aux_shape": shape}

    def micro_batches(
        self, examples: list[dict[str, torch.Tensor]]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Padded micro-batches of ``micro_batch`` examples, similar lengths together.

        On CPU a micro-batch of one is fastest: with no padding, attention takes the fused causal
        path instead of materialising a mask.
        """
        order = sorted(range(len(examples)), key=lambda i: int(examples[i]["input_ids"].shape[0]))
        size = self.cfg.micro_batch
        pad = self.processor.tokenizer.pad_token_id
        for k in range(0, len(order), size):
            yield collate([examples[i] for i in order[k : k + size]], pad, AUX_KEYS)

    # -- train ----------------------------------------------------------------------------------

    def train(self) -> None:
        """The loop: forward, loss on assistant tokens, clip, step; logs, checkpoints."""
        cfg = self.cfg
        log_path = cfg.out / "log.jsonl"
        bar = tqdm(
            total=cfg.steps, initial=self.step, file=sys.stderr, desc="sft", dynamic_ncols=True
        )
        self.model.train()
        started = time.perf_counter()
        first_step = self.step
        with log_path.open("a", encoding="utf-8") as log_file:
            while self.step < cfg.steps:
                examples, _ = self.batch_at(self.step)
                total_weight = sum(float(e["loss_weights"].sum()) for e in examples)
                loss_sum, aux_sum = 0.0, 0.0
                tokens = 0
                n_micro = math.ceil(len(examples) / cfg.micro_batch)
                for batch in self.micro_batches(examples):
                    batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
                    labels = batch.pop("labels")
                    weights = batch.pop("loss_weights")
                    aux = batch.pop("aux_colour", None), batch.pop("aux_shape", None)
                    with self._capture() as merged:
                        out = self.model(**batch)
                    # Weighted sum over tokens / all weight of the step: a token-level mean.
                    loss = token_loss(out.logits, labels, "sum", weights) / max(1e-9, total_weight)
                    loss_sum += float(loss.detach())
                    if self.heads is not None and aux[0] is not None and merged:
                        aux_loss = self.heads.loss(torch.cat(merged), *aux) / n_micro
                        aux_sum += float(aux_loss.detach())
                        loss = loss + cfg.vision_aux_weight * aux_loss
                    self.accelerator.backward(loss)
                    tokens += int(batch["attention_mask"].sum())
                norm = self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                elapsed = time.perf_counter() - started
                record = {
                    "step": self.step,
                    "loss": round(loss_sum, 5),
                    **({"vision_aux_loss": round(aux_sum, 5)} if cfg.vision_aux_weight else {}),
                    "grad_norm": round(float(norm), 4),
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens": tokens,
                    "seconds": round(elapsed, 2),
                    "steps_per_s": round((self.step - first_step) / max(elapsed, 1e-9), 4),
                }
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                if self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self.save_checkpoint()
                if cfg.eval_every and self.eval_items and self.step % cfg.eval_every == 0:
                    log_file.write(
                        json.dumps({"step": self.step, "eval": self.track_best()}) + "\n"
                    )
                    log_file.flush()
        bar.close()

    def _capture(self) -> Any:
        """Collect the merged visual tokens for the auxiliary loss (nothing when it is off)."""
        if self.heads is None:
            return contextlib.nullcontext([])
        return capture_merged_tokens(self.accelerator.unwrap_model(self.model).model.visual)

    def track_best(self) -> dict[str, Any]:
        """Evaluate now; save to best/ when held-out accuracy beats every earlier evaluation.

        Ties go to the later model, which has trained longer. The best score is read back from
        best/ so a resumed run keeps comparing against it.
        """
        result = self.evaluate()
        marker = self.cfg.out / "best" / "vmtr_best.json"
        best = json.loads(marker.read_text())["eval"]["accuracy"] if marker.exists() else -1.0
        if result["accuracy"] >= best:
            self.save(self.cfg.out / "best")
            marker.write_text(json.dumps({"step": self.step, "eval": result}, indent=2) + "\n")
            self.log(f"step {self.step}: held-out accuracy {result['accuracy']:.1%}, new best")
        else:
            self.log(
                f"step {self.step}: held-out accuracy {result['accuracy']:.1%} (best {best:.1%})"
            )
        return result

    # -- save -----------------------------------------------------------------------------------

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        folder = self.cfg.out / "checkpoints"
        done = sorted(p for p in folder.glob("step-*") if (p / "trainer_state.pt").exists())
        return done[-1] if done else None

    def save_checkpoint(self) -> Path:
        """Model + processor + optimizer/scheduler/step, written to a temp folder then renamed."""
        folder = self.cfg.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"step-{self.step:06d}"
        tmp = folder / f".tmp-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.save(tmp)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "config": self.cfg.model_dump(mode="json"),
        }
        if self.heads is not None:
            state["needle_heads"] = self.heads.state_dict()
        torch.save(state, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(folder.glob("step-*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def save(self, folder: Path | None = None) -> Path:
        """``save_pretrained`` of the model and processor (the final model by default)."""
        folder = folder or self.cfg.out / "final"
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        return folder

    # -- evaluate -------------------------------------------------------------------------------

    def evaluate(self, settings: ProtocolSettings = MULTI_TURN) -> dict[str, Any]:
        """Greedy multi-turn accuracy on the held-out items through the evaluation runner
        (`heldout.evaluate_items`, rows kept in ``heldout/``), and the teacher-forced reading
        accuracy (`reading`) on the same items where the tokenizer supports it
        (`reading_supported`)."""
        model = self.accelerator.unwrap_model(self.model)
        lm = QwenVideoLM(model, self.processor, ModelSettings(model="sft"))
        try:
            result = evaluate_items(
                lm,
                self.eval_items,
                self.cfg.out / "heldout",
                f"{self.cfg.out.name}@step{self.step}",
                settings,
                max_new_tokens=self.cfg.max_new_tokens,
            )
        finally:
            model.train()
        if not reading_supported(self.processor.tokenizer):
            return result
        return result | reading_accuracy(
            model,
            self.processor,
            self.eval_items,
            self.cfg.out / "frames",
            settings,
            budget=self.budget,
            answer_form=self.cfg.answer_form,
        )


def run_curriculum(
    config: CurriculumConfig, resume: bool = False, log: Callable[[str], None] = print
) -> dict:
    """One whole stage: setup, train, save the final model, evaluate held-out items."""
    recipe = Curriculum(config, log=log)
    recipe.setup(resume=resume)
    recipe.train()
    final = recipe.save()
    report: dict[str, Any] = {"final": str(final), "steps": recipe.step}
    if recipe.eval_items:
        report["eval"] = recipe.evaluate()
    (config.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
