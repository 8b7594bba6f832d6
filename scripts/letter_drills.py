"""Can the model learn to turn a reading into the option's letter? A fast text-only probe.

    python scripts/letter_drills.py --model runs/tiny/10-mixed/final --variant letter \
        --data runs/tiny/data --steps 400

Each example is `plan_answer_drill`'s text (the question, the options, a scripted reading of
every needle, the answer) with no frames, so a step of 32 takes about a second on one core.
The model is trained on it in memory (nothing is saved) and scored every 100 steps on the
``hold-*`` folders under ``--data``, per question kind, teacher-forced at the letter. Variants:

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

``--copy-pretext`` adds, to any variant, a dense induction pretext (a random sequence of reply
words, random filler, the same sequence again; loss on the repeat), to see whether a circuit
that copies by content helps.

Measured on the session-5 warm start (README, "The tiny model"): no variant learned the match
in 200-600 steps, nor did the pretext with random filler; count questions (options always 1-4
in order) are solved by all.
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

from vmtr.agent import protocol
from vmtr.eval.datasets import QAItem, load_video_mtr_json
from vmtr.eval.synthetic import COLOURS, SHAPES
from vmtr.policies import sft

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


def induction_loss(model: Any, pool: list[int], rng: random.Random, batch: int) -> torch.Tensor:
    """Loss on the second copy of a random 12-token sequence, the copies 12 to 36 tokens apart.

    Every row is drawn without repeats (so each token has one earlier match) and the filler
    between the copies varies, so the repeat can only be predicted by finding the current token
    earlier and copying what followed it, the induction circuit. With repeats from a 31-word pool
    (session 6) the loss stayed at chance for 1,000 steps; without them, from a 64-token pool,
    the warm start found the circuit after 700-1,100 steps. The first token of the repeat is
    unpredictable and carries no loss.
    """
    rows, targets = [], []
    for _ in range(batch):
        drawn = rng.sample(pool, 36)
        half, rest = drawn[:12], drawn[12:]
        gap = rng.randint(0, 24)
        row = rest[gap:] + half + rest[:gap] + half
        rows.append(row)
        targets.append([sft.IGNORE] * (len(row) - 11) + half[1:])
    return sft.token_loss(model(input_ids=torch.tensor(rows)).logits, torch.tensor(targets))


def lookup_loss(
    model: Any,
    keys: list[int],
    values: list[int],
    marks: tuple[int, int, int],
    rng: random.Random,
    batch: int,
) -> torch.Tensor:
    """Loss on recalling a key from its value: rows of four "K. V" lines (``keys`` and
    ``values`` drawn without repeats), random filler, then three queries "V is" -> K.

    This is the answer letter's own lookup (the option's letter sits before its text) with
    nothing else to learn: unlike induction, the token to copy comes before the match.
    ``marks`` are the ids of ".", the line break and " is".
    """
    dot, newline, is_ = marks
    rows, targets = [], []
    for _ in range(batch):
        ks = rng.sample(keys, 4)
        vs = rng.sample(values, 4 + 12)
        row: list[int] = []
        for k, v in zip(ks, vs[:4], strict=True):
            row += [k, dot, v, newline]
        row += vs[4 : 4 + rng.randint(0, 12)]
        target = [sft.IGNORE] * len(row)
        for q in rng.sample(range(4), 3):
            row += [vs[q], is_, ks[q], dot]
            target += [sft.IGNORE, ks[q], sft.IGNORE, sft.IGNORE]
        rows.append(row)
        targets.append(target)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [newline] * (width - len(r)) for r in rows])
    labels = torch.tensor([t + [sft.IGNORE] * (width - len(t)) for t in targets])
    return sft.token_loss(model(input_ids=ids).logits, labels)


def pretext_pool(tok: Any, size: int = 64) -> list[int]:
    """The reply's own words, letters and digits, topped up with other ordinary tokens."""
    words = [*COLOURS, *SHAPES, "frame", "the", "came", "first", "Seen", "Border"]
    pool = {i for w in words for i in tok(f" {w}", add_special_tokens=False)["input_ids"]}
    pool |= {tok.convert_tokens_to_ids(c) for c in "ABCD0123456789"}
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)
    for i in range(len(tok)):
        if len(pool) >= size:
            break
        if i not in special:
            pool.add(i)
    return sorted(pool)


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
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model)
    tok = processor.tokenizer
    folders = sorted(p for p in args.data.iterdir() if (p / "annotations.json").exists())
    train = load([p for p in folders if not p.name.startswith("hold")])
    held = load([p for p in folders if p.name.startswith("hold")])
    pool = pretext_pool(tok)
    keys = [tok.convert_tokens_to_ids(c) for c in "ABCDEFGH"]
    values = [i for i in pool if i not in keys]
    marks = (
        tok.convert_tokens_to_ids("."),
        tok("\n", add_special_tokens=False)["input_ids"][0],
        tok(" is", add_special_tokens=False)["input_ids"][0],
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    rng = random.Random(args.seed)
    print(f"step 0 {score(model, processor, held, args.variant)}", flush=True)
    model.train()
    for step in range(1, args.pretext_steps + 1):
        loss = induction_loss(model, pool, rng, args.batch_size)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
        inputs = sft.collate([enc for enc, _ in batch], tok.pad_token_id or 0)
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
        loss = sft.token_loss(logits, inputs["labels"])
        copy = lookup = torch.zeros(())
        if args.copy_pretext:
            copy = induction_loss(model, pool, rng, args.batch_size)
            loss = loss + copy
        if args.lookup_pretext:
            lookup = lookup_loss(model, keys, values, marks, rng, args.batch_size)
            loss = loss + lookup
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 20 == 0:
            print(
                f"step {step} loss {loss.item():.3f} (copy pretext {copy.item():.3f}, "
                f"lookup pretext {lookup.item():.3f})",
                flush=True,
            )
        if step % 100 == 0:
            print(f"step {step} {score(model, processor, held, args.variant)}", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)


if __name__ == "__main__":
    main()
