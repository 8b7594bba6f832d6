"""Can the model learn to turn a reading into the option's letter? A fast text-only probe.

    python recipes/tiny/letter_drills.py --model runs/tiny/10-mixed/final --data runs/tiny/data \
        --variant bridge --copy-pretext --lookup-pretext --pretext-steps 1500 --steps 400

Each example is `plan_answer_drill`'s text (the question, the options, a scripted reading of
every needle, the answer) with no frames, so a step of 32 takes about a second on one core.
The model is trained on it in memory, saved with ``--save``, and scored every 100 steps on the
``hold-*`` folders under ``--data`` (if any), per question kind, teacher-forced at the letter.
Variants:

- ``letter``: the drill as the SFT recipe writes it (loss on the letter);
- ``two``: two options only, the right one and one other, relettered A and B (a curriculum);
- ``bridge``: the reading ends "so green is D." (`sft.bridge_clause`: the option's text, then its
  letter), loss on that clause and the answer; scored at the letter after "is";
- ``after``: options written word first ("greenD", one token each) and the reading ending
  "greenD.", so the letter is what follows the word, as a copy circuit fetches it;
- ``scan``: the reading goes on "A. blue no. B. cyan no. C. yellow no. D. green it." - each
  option in turn, compared with the reading, stopping at the one it shows - then the answer is
  the letter just written; scored on every verdict of the scan (all must be right), loss on
  the scan and the answer.

Two pretexts teach what every variant needs, finding a token by its identity:
``--copy-pretext`` (induction: a random sequence, filler, the sequence again) and
``--lookup-pretext`` (a key from its value: "K. V" lines after a question, then "V is K").
``--pretext-steps`` runs the copy pretext alone first; the induction circuit appears after
700-1,100 steps of it (a sudden drop in its loss).

Measured (docs/tiny-model.md): without the pretexts no variant learned the match in
200-1,000 steps; with the induction circuit, ``after`` is solved in 100 steps and ``bridge`` in
100-300 once the lookup pretext is drawn after real questions. Count questions (options
always 1-4 in order) are solved by all; order questions (every option ends "came first")
are not. A model trained here is not a recipe stage: a few thousand text-only steps rewrite
the language model (weights moved 2-9x their norm) and it no longer follows the protocol on
video prompts; 100 steps of protocol episodes did not mend it. `vmtr train sft
--pretext-weight` trains the same pretexts alongside protocol episodes instead; there the
induction circuit forms (1,100-2,000 steps) but neither carries over to the options nor lets
the lookup be learned, even by 600 text-only steps here afterwards (session 8).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from vmtr import protocol
from vmtr.eval.datasets import QAItem, load_video_mtr_json
from vmtr.policies import pretext, sft

Example = tuple[dict[str, torch.Tensor], int]  # encoded drill, position that predicts the letter


def load(folders: list[Path]) -> list[tuple[QAItem, str]]:
    """(item, question kind) of every item in ``folders``."""
    out = []
    for folder in folders:
        path = folder / "annotations.json"
        kinds = {r["problem_id"]: r["kind"] for r in json.loads(path.read_text())}
        out += [(item, kinds[item.id]) for item in load_video_mtr_json(path)]
    return out


def drill(item: QAItem, variant: str, processor: Any, rng: random.Random) -> Example:
    """One text-only drill of ``item`` in ``variant``."""
    tok = processor.tokenizer
    texts = [protocol.option_text(o) for o in item.options]
    right = item.letters.index(item.answer)
    if variant == "two":
        other = rng.choice([i for i in range(len(texts)) if i != right])
        keep = sorted([right, other])
        texts, right = [texts[i] for i in keep], keep.index(right)
    letters = [chr(ord("A") + i) for i in range(len(texts))]
    options = [f"{letter}. {text}" for letter, text in zip(letters, texts, strict=True)]
    if variant == "after":
        options = [f" {text}{letter}" for letter, text in zip(letters, texts, strict=True)]
    user = "\n".join([f"Question: {item.question.strip()}", "Options:", *options])
    think = sft.describe_seen(item, {n["pool_index"] for n in sft.needles_of(item)})
    if variant == "bridge":
        think += sft.bridge_clause(item)
    elif variant == "after":
        think += f" {texts[right]}{letters[right]}."
    elif variant == "scan":  # each option against the reading, stopping at the one it shows
        lines = [f"{options[i]} {'it' if i == right else 'no'}." for i in range(right + 1)]
        think += " " + " ".join(lines)
        scan_width = len(tok(" " + " ".join(lines), add_special_tokens=False)["input_ids"])
    reply = f"<think>{think}</think><answer>{letters[right]}</answer>"
    messages = [
        {"role": "user", "content": [{"type": "text", "text": user}]},
        protocol.assistant_message(reply),
    ]
    enc = sft.encode_conversation(processor, messages, [])
    ids, labels = enc["input_ids"], enc["labels"]
    open_id, close_id = tok.convert_tokens_to_ids(["<answer>", "</answer>"])
    keep = sft.between_tags(ids, open_id, close_id)
    scored = int((ids == open_id).nonzero()[-1])
    if variant == "bridge":
        is_at = int((ids == tok(" is", add_special_tokens=False)["input_ids"][0]).nonzero()[-1])
        width = len(tok(sft.bridge_clause(item), add_special_tokens=False)["input_ids"])
        keep[is_at - width + 4 :] = True  # from " so" on (the text, " is", letter, ".")
        scored = is_at + 1  # " is", " ", then the letter
    elif variant == "after":
        end = int((ids == tok.convert_tokens_to_ids("</think>")).nonzero()[0])
        scored = end - 3  # the option's last word, then the letter and "."
        width = len(tok(f" {texts[right]}", add_special_tokens=False)["input_ids"])
        keep[scored + 1 - width :] = True
    elif variant == "scan":  # scored at the verdict on the right option; loss on the whole scan
        verdict = tok(" it", add_special_tokens=False)["input_ids"][0]
        end = int((ids == tok.convert_tokens_to_ids("</think>")).nonzero()[0])
        scored = int((ids[:end] == verdict).nonzero()[-1]) - 1
        keep[end - scan_width :] = True
    keep &= labels != sft.IGNORE
    enc["labels"] = torch.where(keep, labels, torch.full_like(labels, sft.IGNORE))
    return enc, scored


@torch.no_grad()
def score(model: Any, processor: Any, held: list[tuple[QAItem, str]], variant: str) -> dict:
    """Teacher-forced letter accuracy per question kind."""
    model.eval()
    hits, total = collections.Counter(), collections.Counter()
    rng = random.Random(7)
    verdicts = {
        processor.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" no", " it")
    }
    for item, kind in held:
        enc, at = drill(item, variant, processor, rng)
        ids, labels = enc["input_ids"], enc["labels"]
        predicted = model(input_ids=ids[None]).logits[0].argmax(-1)
        positions = [at]
        if variant == "scan":  # every verdict, "no" and "it" alike
            positions = [i for i in range(len(ids) - 1) if int(labels[i + 1]) in verdicts]
        hits[kind] += int(all(predicted[i] == ids[i + 1] for i in positions))
        total[kind] += 1
    model.train()
    out = {k: round(hits[k] / total[k], 2) for k in sorted(total)}
    return out | {"all": round(sum(hits.values()) / sum(total.values()), 3)}


def trainable(model: Any, attention_only: bool) -> list[torch.nn.Parameter]:
    """The parameters to train: all, or only the language model's attention projections.

    Text-only training of everything at lr 1e-3 for a few thousand steps undoes the protocol
    (the model then writes "CCCC..." to a video prompt, and 100 steps of protocol episodes
    did not mend it); the lookup is an attention circuit, so the rest can stay frozen.
    """
    if not attention_only:
        return list(model.parameters())
    keep = []
    for name, param in model.named_parameters():
        wanted = "language_model" in name and "self_attn" in name
        param.requires_grad_(wanted)
        if wanted:
            keep.append(param)
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--variant", choices=["letter", "two", "bridge", "after", "scan"], default="letter"
    )
    parser.add_argument("--data", type=Path, default=Path("runs/tiny/data"))
    parser.add_argument("--copy-pretext", action="store_true", help="Add the induction pretext.")
    parser.add_argument(
        "--pretext-steps", type=int, default=0, help="Steps of the pretext alone, first."
    )
    parser.add_argument(
        "--lookup-pretext", action="store_true", help="Add the key-from-value pretext."
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", type=Path, help="Save the trained model and processor here.")
    parser.add_argument(
        "--attention-only",
        action="store_true",
        help="Train the text model's attention weights only (see `trainable`).",
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    tok = processor.tokenizer
    folders = sorted(p for p in args.data.iterdir() if (p / "annotations.json").exists())
    train = load([p for p in folders if not p.name.startswith("hold")])
    held = load([p for p in folders if p.name.startswith("hold")])
    sources = pretext.PretextSources.of(tok, [item.question for item, _ in train[:200]])
    pad = tok.pad_token_id or 0
    params = trainable(model, args.attention_only)
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95))
    rng = random.Random(args.seed)
    if held:
        print(f"step 0 {score(model, processor, held, args.variant)}", flush=True)
    model.train()
    for step in range(1, args.pretext_steps + 1):
        loss = pretext.losses(model, sources, rng, args.batch_size, pad, ["induction"])["induction"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0:
            print(f"pretext step {step} copy loss {loss.item():.3f}", flush=True)
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 5)
        batch = [
            drill(rng.choice(train)[0], args.variant, processor, rng)
            for _ in range(args.batch_size)
        ]
        inputs = sft.collate([enc for enc, _ in batch], pad)
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
        loss = sft.token_loss(logits, inputs["labels"])
        kinds = ["induction"] * args.copy_pretext + ["lookup"] * args.lookup_pretext
        extra = pretext.losses(model, sources, rng, args.batch_size, pad, kinds)
        loss = loss + sum(extra.values())
        copy, lookup = (extra.get(k, torch.zeros(())) for k in ("induction", "lookup"))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 20 == 0:
            print(
                f"step {step} loss {loss.item():.3f} (copy pretext {copy.item():.3f}, "
                f"lookup pretext {lookup.item():.3f})",
                flush=True,
            )
        if step % 100 == 0 and held:
            print(f"step {step} {score(model, processor, held, args.variant)}", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)


if __name__ == "__main__":
    main()
