"""The demo's task: short chats a tiny model learns in a minute, with answers that are partly random.

Some answers are fixed (what an animal says, counting), others are drawn from a distribution that depends on
the question (the colour of a fruit, what an animal likes). One sampled answer per record is all that
supervised fine-tuning sees; a teacher that has learnt the distribution passes all of it on through its
logits. That is the dark knowledge distillation transfers, and it shows in the student's eval loss.
"""

import json
import random
from pathlib import Path

FRUIT_COLOURS = {
    "apple": {"red": 0.6, "green": 0.3, "yellow": 0.1},
    "banana": {"yellow": 0.85, "green": 0.15},
    "grape": {"purple": 0.5, "green": 0.4, "red": 0.1},
    "pear": {"green": 0.7, "yellow": 0.3},
    "plum": {"purple": 0.8, "red": 0.2},
    "lemon": {"yellow": 0.95, "green": 0.05},
    "cherry": {"red": 0.9, "black": 0.1},
    "melon": {"green": 0.5, "orange": 0.3, "yellow": 0.2},
}
ANIMAL_SOUNDS = {
    "cow": "moo",
    "dog": "woof",
    "cat": "meow",
    "duck": "quack",
    "sheep": "baa",
    "owl": "hoot",
    "frog": "croak",
    "horse": "neigh",
}
ANIMAL_LIKES = {
    "cow": {"grass": 0.7, "hay": 0.3},
    "dog": {"bones": 0.5, "walks": 0.3, "balls": 0.2},
    "cat": {"fish": 0.5, "naps": 0.4, "milk": 0.1},
    "duck": {"ponds": 0.6, "bread": 0.4},
    "sheep": {"grass": 0.8, "hay": 0.2},
    "owl": {"mice": 0.7, "nights": 0.3},
    "frog": {"flies": 0.8, "ponds": 0.2},
    "horse": {"hay": 0.5, "apples": 0.3, "carrots": 0.2},
}
ADJECTIVES = ("small", "big", "happy", "sleepy", "quick", "old", "young", "brave")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def _draw(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _exchange(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        fruit = rng.choice(list(FRUIT_COLOURS))
        return f"What color is the {fruit}?", f"The {fruit} is {_draw(rng, FRUIT_COLOURS[fruit])}."
    if kind == 1:
        animal = rng.choice(list(ANIMAL_SOUNDS))
        return f"What does the {animal} say?", f"The {animal} says {ANIMAL_SOUNDS[animal]}."
    if kind == 2:
        start = rng.randrange(len(NUMBERS) - 5)
        stop = start + rng.randint(2, 4)
        return (
            f"Count from {NUMBERS[start]} to {NUMBERS[stop]}.",
            " ".join(NUMBERS[start : stop + 1]) + ".",
        )
    animal = rng.choice(list(ANIMAL_LIKES))
    adjective = rng.choice(ADJECTIVES)
    return (
        f"Tell me about a {adjective} {animal}.",
        f"The {adjective} {animal} likes {_draw(rng, ANIMAL_LIKES[animal])}.",
    )


def chat_records(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        question, answer = _exchange(rng)
        records.append(
            {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
        )
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


# -- chats about pictures (vision-language models) ---------------------------------------------------------

FRUITS_BY_COLOUR = {
    "red": ((230, 20, 20), {"apple": 0.6, "cherry": 0.4}),
    "yellow": ((230, 210, 40), {"banana": 0.5, "lemon": 0.5}),
    "green": ((40, 170, 60), {"pear": 0.6, "melon": 0.4}),
    "purple": ((70, 0, 210), {"grape": 0.5, "plum": 0.5}),
}
"""The picture's colour decides which fruits it may show; which one a record names is drawn, so only a
teacher that saw many records knows the spread."""
PICTURE_SIZE = (56, 56)
"""The smallest picture a Qwen2-VL processor takes: 4 x 4 patches of 14 pixels, 4 image tokens."""


def picture_records(folder: Path, count: int, seed: int) -> list[dict]:
    """`count` chats asking which fruit a picture shows, their pictures written to `folder` (one PNG per
    colour); the image parts name them relative to `folder`, where the data file goes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, (colour, (rgb, _)) in enumerate(FRUITS_BY_COLOUR.items()):
        # Speckled, not flat: the vision tower normalises each patch, which would wash a flat colour's
        # patches towards one another.
        speckle = np.random.default_rng(index).integers(-60, 60, (*PICTURE_SIZE, 3))
        pixels = np.clip(np.asarray(rgb) + speckle, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / f"{colour}.png")
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        colour = rng.choice(list(FRUITS_BY_COLOUR))
        fruit = _draw(rng, FRUITS_BY_COLOUR[colour][1])
        question = [
            {"type": "image", "image": f"{colour}.png"},
            {"type": "text", "text": "Which fruit is this?"},
        ]
        records.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": f"It is a {fruit}."},
                ]
            }
        )
    return records


def picture_texts() -> list[str]:
    """Every text the picture chats hold, to build a tokenizer that covers them."""
    fruits = [fruit for _, spread in FRUITS_BY_COLOUR.values() for fruit in spread]
    return ["Which fruit is this?", *(f"It is a {fruit}." for fruit in fruits)]
