#!/usr/bin/env python3
"""Writes the bundled inputs of ftune's end-to-end demo (cluster/demo.sh), deterministically:

  corpus.jsonl        {"text": ...}                plain text to pretrain the tiny base model on
  instructions.jsonl  {"question": ..., "answer": ...}  the instruction dataset to finetune on

Both are made from the small word list and number ranges below by a seeded generator, so
re-running this script reproduces the committed files byte for byte (python3 make_demo_data.py
&& git diff --exit-code). The tasks are small, well defined and checked by exact match: spell a
word in capital letters, its first / last letter, a short word backwards, metric unit
conversions, even or odd, the next number. The corpus states the same kind of facts in prose
("Backwards, stone reads enots."), so pretraining gives the base model the knowledge and the
finetune teaches it to answer questions in the "### Question: / ### Answer:" format.
Written for ftune; CC0 1.0 (see README.md).
"""
import json
import os
import random

SEED = 20240607
HERE = os.path.dirname(os.path.abspath(__file__))

WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat bell belt best
bird blue boat body bone book boot born both bowl bread brick bridge bright brown build burn
cake call calm camp card care cart case cash cast cat cell chair chalk cheap check chest chin
city clay clean clock cloud coal coat code cold cook cool copy corn cost crab crow cube cup
dark date deer desk dish door dove down draw dream dress drink drum duck dust eagle early earth
east easy edge egg eight empty face fact farm fast fern field fire fish five flag flat floor
flow fog food foot fork fox frog fruit game gate gift girl glass goat gold good grape grass
green grey hall hand hard hat head heart hill home hope horn horse hot hour house ice idea
iron jam jar jump key kind king kite lake lamp land large leaf left lemon light lime line lion
lock long loud love low lunch map mark milk mint moon moss mouse mud nail name near neck nest
net new night nine north nose note oak ocean oil old olive open owl page paint palm paper park
path peach pear pen pig pine pink plan plant plate plum pond pool port pot rain red rice ring
river road rock roof room root rope rose round salt sand seed seven shell ship shoe short silk
sing sink six sky slow small snow soap sock soft song soup south star stone storm sun swan
table tall tea ten tent three tide tiger time toad tree two vase wall warm wave west wheat wind
wolf wood wool word yard year yellow zero zinc
""".split()

NUMBER_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]

UNITS = [  # (big unit, small unit, factor)
    ("meters", "centimeters", 100),
    ("kilograms", "grams", 1000),
    ("kilometers", "meters", 1000),
    ("liters", "milliliters", 1000),
    ("centimeters", "millimeters", 10),
]


def qa_examples(rng):
    """(question, answer) pairs, each task over its whole (small) domain."""
    out = []
    for w in WORDS:
        out.append((f"Write the word '{w}' in capital letters.", w.upper()))
        out.append((f"What is the first letter of '{w}'?", w[0]))
        out.append((f"What is the last letter of '{w}'?", w[-1]))
        if len(w) <= 5:
            out.append((f"Spell '{w}' backwards.", w[::-1]))
    for big, small, f in UNITS:
        for n in range(1, 21):
            out.append((f"How many {small} are in {n} {big}?", str(n * f)))
    for n in range(1, 100):
        out.append((f"Is {n} even or odd?", "even" if n % 2 == 0 else "odd"))
        out.append((f"What number comes after {n}?", str(n + 1)))
    rng.shuffle(out)
    return out


def corpus_texts(rng):
    """Short paragraphs of prose stating the same kind of facts."""
    texts = []
    for w in WORDS:
        n = len(w)
        name = NUMBER_NAMES[n] if n < len(NUMBER_NAMES) else str(n)
        s = [f"The word {w} has {name} letters.",
             f"It starts with the letter {w[0]} and ends with the letter {w[-1]}.",
             f"In capital letters it is written {w.upper()}.",
             f"Backwards, {w} reads {w[::-1]}."]
        rng.shuffle(s)
        texts.append(" ".join(s))
    for big, small, f in UNITS:
        for n in range(1, 21):
            texts.append(f"There are {f} {small} in one {big[:-1]}, so {n} {big} are "
                         f"{n * f} {small}. To turn {big} into {small}, multiply by {f}.")
    for n in range(1, 100):
        parity = "even" if n % 2 == 0 else "odd"
        texts.append(f"The number {n} is {parity}. After {n} comes {n + 1}, and before "
                     f"{n + 1} comes {n}. Counting on: {n}, {n + 1}, {n + 2}.")
    # A little connected prose, so the base model is not only lists of facts.
    for _ in range(200):
        a, b, c = rng.sample(WORDS, 3)
        texts.append(f"In the morning the {a} was near the {b}. Later a {c} came by, and the "
                     f"{a} and the {c} stayed until night. Then the {b} was alone again.")
    rng.shuffle(texts)
    return texts


def main():
    rng = random.Random(SEED)
    qa = qa_examples(rng)
    texts = corpus_texts(rng)
    with open(os.path.join(HERE, "instructions.jsonl"), "w", encoding="utf-8") as f:
        for q, a in qa:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    print(f"wrote {len(qa)} instruction examples and {len(texts)} corpus texts to {HERE}")


if __name__ == "__main__":
    main()
