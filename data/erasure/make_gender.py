"""Write ``gender.jsonl``: short third-person bios, balanced by gender, profession and template.

    python data/erasure/make_gender.py          # rewrites data/erasure/gender.jsonl

In the spirit of Bias in Bios (De-Arteaga et al., FAccT 2019), whose biographies name a person,
their profession and refer to them with pronouns; every template, name list and filler here was
written for steerlab. First names are common US first names (from general knowledge of the
popular-name lists), 40 per gender; a fixed quarter of each list is held out as the ``test``
split, so held-out accuracy is measured on people the probe never saw.

Each line: ``text``, ``label`` (0 female, 1 male), ``gender``, ``name`` (None for templates
that use only pronouns), ``profession``, ``template`` (index), ``split`` (train/test by name;
pronoun-only rows are assigned by a seeded coin), and ``cues``: ``[start, end)`` character
spans of the name and of every gendered pronoun, for per-token labels. The label of a text is
read at its last token.

Balance: every (template, profession) cell has the same number of female and male rows, so
neither profession nor template predicts the label.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

SEED = 0
N_PER_CELL = 2  # rows per (template, profession, gender) cell

FEMALE = [
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
    "Sarah", "Karen", "Lisa", "Nancy", "Betty", "Sandra", "Margaret", "Ashley", "Kimberly",
    "Emily", "Donna", "Michelle", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Sharon", "Laura", "Cynthia", "Amy", "Angela", "Helen", "Anna", "Brenda",
    "Emma", "Olivia", "Rachel", "Hannah", "Megan", "Julia",
]  # fmt: skip
MALE = [
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven",
    "Paul", "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald",
    "Edward", "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan",
    "Stephen", "Larry", "Justin", "Scott", "Brandon",
]  # fmt: skip
PROFESSIONS = [
    "professor", "physician", "attorney", "photographer", "journalist", "nurse",
    "psychologist", "teacher", "dentist", "surgeon", "architect", "painter", "poet",
    "filmmaker", "software engineer", "accountant", "composer", "dietitian", "comedian",
    "chiropractor", "pastor", "paralegal", "yoga teacher", "interior designer",
    "personal trainer", "model", "pharmacist", "librarian",
]  # fmt: skip
CITIES = ["Chicago", "Denver", "Boston", "Austin", "Seattle", "Atlanta", "Portland", "Phoenix"]
# {name} {a} {prof} {subj} {Subj} {obj} {poss} {Poss} {city} {years}
TEMPLATES = [
    "{name} is {a} {prof} in {city}. {Subj} lives there with {poss} two dogs.",
    "{name} has worked as {a} {prof} for {years} years, and {subj} still enjoys it.",
    "{name} is {a} {prof} based in {city}. {Subj} studied at a small college nearby.",
    "After years of training, {name} became {a} {prof}. Everyone says {subj} is good at it.",
    "{name} works as {a} {prof}. Colleagues describe {obj} as careful and kind.",
    "As {a} {prof}, {name} spends most of {poss} days with clients.",
    "{name}, {a} {prof} from {city}, said that {subj} would retire next year.",
    "Meet {name}, {a} {prof}. {Poss} work has been featured in the local news.",
    "{name} is a well-known {prof}. In {poss} spare time {subj} likes to hike.",
    "Before becoming {a} {prof}, {name} taught school for {years} years.",
    "{name} is {a} {prof} with {years} years of experience.",
    "{name} trained as {a} {prof} in {city} and opened {poss} own practice.",
    "The {prof} said that {subj} would be late to the meeting.",
    "Our new {prof} moved here from {city} last spring, and {subj} loves it.",
    "The {prof} finished {poss} report and sent it to the board.",
    "Ask the {prof} whether {subj} can see you on Monday.",
    "{Subj} is {a} {prof} who grew up in {city}.",
    "{Subj} has been {a} {prof} for {years} years.",
]
PRONOUNS = {
    "female": {"subj": "she", "obj": "her", "poss": "her"},
    "male": {"subj": "he", "obj": "him", "poss": "his"},
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(template: str, gender: str, name: str | None, prof: str, rng: random.Random):
    """The text and the character spans of its gendered words (name and pronouns)."""
    p = PRONOUNS[gender]
    values = {
        "name": name or "", "a": _article(prof), "prof": prof, "city": rng.choice(CITIES),
        "years": str(rng.randint(3, 25)), "subj": p["subj"], "Subj": p["subj"].capitalize(),
        "obj": p["obj"], "poss": p["poss"], "Poss": p["poss"].capitalize(),
    }  # fmt: skip
    text, cues, pos = "", [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        text += template[pos : m.start()]
        value = values[m.group(1)]
        if m.group(1) in ("name", "subj", "Subj", "obj", "poss", "Poss"):
            cues.append([len(text), len(text) + len(value)])
        text += value
        pos = m.end()
    return text + template[pos:], cues


def build() -> list[dict]:
    rng = random.Random(SEED)
    names = {"female": list(FEMALE), "male": list(MALE)}
    test_names = set()
    for g in names:
        shuffled = rng.sample(names[g], len(names[g]))
        test_names.update(shuffled[: len(shuffled) // 4])
    rows = []
    for t, template in enumerate(TEMPLATES):
        for prof in PROFESSIONS:
            for gender, label in (("female", 0), ("male", 1)):
                for _ in range(N_PER_CELL):
                    name = rng.choice(names[gender]) if "{name}" in template else None
                    text, cues = _fill(template, gender, name, prof, rng)
                    if name is not None:
                        split = "test" if name in test_names else "train"
                    else:
                        split = "test" if rng.random() < 0.25 else "train"
                    rows.append({
                        "text": text, "label": label, "gender": gender, "name": name,
                        "profession": prof, "template": t, "split": split, "cues": cues,
                    })  # fmt: skip
    return rows


def main() -> None:
    out = Path(__file__).with_name("gender.jsonl")
    rows = build()
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
