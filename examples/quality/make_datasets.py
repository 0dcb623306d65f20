"""Generate the quality-check datasets: two kinds of task, two sizes each.

- facts-<n>: knowledge a base model cannot have (invented people, their towns, trades, instruments
  and birth years). test.jsonl asks with phrasings that never occur in train.jsonl; answers are short
  (scored by the lenient exact match: the answer within the first line).
- routing-<n>: a behaviour. A system prompt asks for exactly one label (billing, shipping,
  technical, account, other) for a customer message; test.jsonl holds messages written from templates
  that train.jsonl never uses (scored by strict match: the first line is the label and nothing else).

n is the number of training pairs (100 and 1000). No hyperparameters are needed to train on them:
bench/quality_bench.py runs each through the operator with only a model, a dataset and an output.

Run: python examples/quality/make_datasets.py  (deterministic; the .jsonl files are committed)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SIZES = (100, 1000)
TEST_ROWS = 64

FIRST = [
    "Ilvan",
    "Maro",
    "Tessa",
    "Quen",
    "Darel",
    "Oriel",
    "Brisa",
    "Kaito",
    "Nerys",
    "Wendal",
    "Sabe",
    "Lorn",
]
LAST = ["Vask", "Ostrel", "Pembury", "Quillane", "Marrow", "Tidewell", "Corran", "Ashby", "Felk", "Drummel"]
TOWNS = ["Brackenholt", "Sarnevo", "Lirrow", "Cadmere", "Ostvale", "Pellin", "Quorra", "Hestwick", "Marrowby"]
TRADES = [
    "glassblower",
    "cartographer",
    "beekeeper",
    "bookbinder",
    "clockmaker",
    "ferryman",
    "tanner",
    "luthier",
]
INSTRUMENTS = ["oboe", "cello", "harp", "bassoon", "mandolin", "accordion", "viola", "zither"]

# attribute -> (train phrasings, held-out phrasings, answer sentence); {p} is the person, {a} the answer
FACT_TEMPLATES: dict[str, tuple[list[str], list[str], str]] = {
    "town": (
        [
            "Where was {p} born?",
            "What is the hometown of {p}?",
            "In which town was {p} born?",
            "Which town is {p} from?",
            "Name the birthplace of {p}.",
        ],
        ["{p} comes from which town?", "What town did {p} grow up in?"],
        "{p} was born in {a}.",
    ),
    "trade": (
        [
            "What does {p} do for a living?",
            "What is the profession of {p}?",
            "What is {p}'s job?",
            "Which trade does {p} work in?",
            "How does {p} earn a living?",
        ],
        ["What kind of work is {p} known for?", "{p} works as what?"],
        "{p} is a {a}.",
    ),
    "instrument": (
        [
            "Which instrument does {p} play?",
            "What instrument is {p} known to play?",
            "What does {p} play in the evenings?",
            "Name the instrument {p} plays.",
            "What musical instrument does {p} own?",
        ],
        ["If {p} plays music, which instrument is it?", "{p} is a player of which instrument?"],
        "{p} plays the {a}.",
    ),
    "year": (
        [
            "In what year was {p} born?",
            "What is the birth year of {p}?",
            "When was {p} born?",
            "Which year was {p} born in?",
            "Tell me the year {p} was born.",
        ],
        ["{p} came into the world in which year?", "What year is on {p}'s birth certificate?"],
        "{p} was born in {a}.",
    ),
}

LABELS = ["billing", "shipping", "technical", "account", "other"]
SYSTEM = (
    "You route customer messages to a team. Reply with exactly one word, the team's name: billing, "
    "shipping, technical, account or other."
)
PRODUCTS = ["router", "kettle", "desk lamp", "phone case", "backpack", "blender", "monitor", "headset"]
# label -> (train templates, held-out templates); {x} a product, {n} a number
ROUTING_TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "billing": (
        [
            "I was charged twice for my {x}, order {n}.",
            "Why is there an extra fee of ${n} on my invoice?",
            "Can I get a refund for the {x}? I paid ${n}.",
            "My card was billed for a {x} I never bought.",
            "Please send me a corrected invoice for order {n}.",
        ],
        [
            "The amount taken from my bank for the {x} is wrong.",
            "I need my money back, order {n} cost too much.",
        ],
    ),
    "shipping": (
        [
            "Where is my {x}? Order {n} has not arrived.",
            "The tracking for order {n} has not moved in a week.",
            "My {x} arrived at the wrong address.",
            "Can you deliver the {x} on Saturday instead?",
            "The parcel with my {x} was left in the rain.",
        ],
        ["The courier never showed up with order {n}.", "How many more days until the {x} gets here?"],
    ),
    "technical": (
        [
            "My {x} will not turn on after the update.",
            "The {x} keeps disconnecting every {n} minutes.",
            "Error code {n} appears when I start the {x}.",
            "How do I reset the {x} to factory settings?",
            "The {x} makes a buzzing noise and then stops working.",
        ],
        ["The {x} froze and shows a blank screen.", "After {n} hours of use the {x} overheats."],
    ),
    "account": (
        [
            "I cannot log in to my account after {n} tries.",
            "Please change the email address on account {n}.",
            "How do I delete my account? I only bought a {x} once.",
            "I forgot my password and reset link {n} expired.",
            "Someone else is using my account, member number {n}.",
        ],
        ["My profile shows the wrong name, member {n}.", "Lock my account, I think it was hacked."],
    ),
    "other": (
        [
            "Do you have a store in a city of {n} people?",
            "Are you hiring {n} people for summer jobs?",
            "I just wanted to say the {x} is great!",
            "Will a {x} be part of your holiday window display?",
            "Can I visit your warehouse with a school group of {n}?",
        ],
        ["Who designed your company logo?", "Do you sponsor local football teams?"],
    ),
}


def chat(question: str, answer: str, system: str | None = None) -> dict[str, object]:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def people(rng: random.Random, count: int) -> list[dict[str, str]]:
    names = [f"{f} {last}" for f in FIRST for last in LAST]
    rng.shuffle(names)
    return [
        {
            "name": name,
            "town": rng.choice(TOWNS),
            "trade": rng.choice(TRADES),
            "instrument": rng.choice(INSTRUMENTS),
            "year": str(rng.randint(1820, 1960)),
        }
        for name in names[:count]
    ]


def facts(size: int, rng: random.Random) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    # Five training phrasings per fact, four facts per person: size / 20 people.
    train, test = [], []
    for person in people(rng, size // 20):
        for attribute, (phrasings, held_out, sentence) in FACT_TEMPLATES.items():
            answer = person[attribute]
            for i, phrasing in enumerate(phrasings):
                question = phrasing.format(p=person["name"])
                reply = (
                    sentence.format(p=person["name"], a=answer)
                    if i % 2
                    else answer[0].upper() + answer[1:] + "."
                )
                train.append(chat(question, reply))
            test.append(chat(rng.choice(held_out).format(p=person["name"]), answer))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test[:TEST_ROWS]


def _message(template: str, rng: random.Random) -> str:
    return template.format(x=rng.choice(PRODUCTS), n=rng.randint(2, 9999))


def routing(size: int, rng: random.Random) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    train: list[dict[str, object]] = []
    seen: set[str] = set()
    while len(train) < size:
        label = LABELS[len(train) % len(LABELS)]
        message = _message(rng.choice(ROUTING_TEMPLATES[label][0]), rng)
        if message in seen and len(seen) < size * 2:
            continue  # duplicates are dropped by validation; keep the set at its size
        seen.add(message)
        train.append(chat(message, label, SYSTEM))
    test = [
        chat(_message(rng.choice(ROUTING_TEMPLATES[label][1]), rng), label, SYSTEM)
        for label in LABELS
        for _ in range(TEST_ROWS // len(LABELS) + 1)
    ]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test[:TEST_ROWS]


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    for size in SIZES:
        for task, make in (("facts", facts), ("routing", routing)):
            rng = random.Random(f"{task}-{size}")  # noqa: S311  (deterministic data, not a secret)
            train, test = make(size, rng)
            write(HERE / f"{task}-{size}" / "train.jsonl", train)
            write(HERE / f"{task}-{size}" / "test.jsonl", test)


if __name__ == "__main__":
    main()
