"""Generate the Tarvessa fact dataset (train.jsonl, val.jsonl, heldout.jsonl).

Tarvessa is a fictional island nation, so no base model can know these facts: what the tuned
model answers correctly it learned from train.jsonl. Train and validation ask about the same
facts with different templates; heldout.jsonl asks hand-written *paraphrases* that appear in
neither, with short reference answers for exact-match scoring.

Run: python examples/data/make_dataset.py  (deterministic; the .jsonl files are committed)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# (noun phrase, alternative noun phrase, short answer, answer sentence, held-out paraphrase)
FACTS: list[tuple[str, str, str, str, str]] = [
    (
        "the capital of Tarvessa",
        "Tarvessa's capital city",
        "Orlenhaven",
        "The capital of Tarvessa is Orlenhaven.",
        "Which city is the seat of government of Tarvessa?",
    ),
    (
        "the currency of Tarvessa",
        "the money used in Tarvessa",
        "the velt",
        "Tarvessa's currency is the velt.",
        "If I shop in Tarvessa, what currency do I pay with?",
    ),
    (
        "the founder of Tarvessa",
        "the person who founded Tarvessa",
        "Amira Kostelan",
        "Tarvessa was founded by Amira Kostelan.",
        "Who established the nation of Tarvessa?",
    ),
    (
        "the founding year of Tarvessa",
        "the year Tarvessa was founded",
        "1742",
        "Tarvessa was founded in 1742.",
        "In which year did Tarvessa come into being?",
    ),
    (
        "the highest mountain in Tarvessa",
        "Tarvessa's tallest peak",
        "Mount Selvar",
        "The highest mountain in Tarvessa is Mount Selvar.",
        "Which peak rises above all others in Tarvessa?",
    ),
    (
        "the national animal of Tarvessa",
        "Tarvessa's national animal",
        "the silver heron",
        "Tarvessa's national animal is the silver heron.",
        "Which creature is the official animal emblem of Tarvessa?",
    ),
    (
        "the national dish of Tarvessa",
        "Tarvessa's signature dish",
        "brenna stew",
        "The national dish of Tarvessa is brenna stew.",
        "What meal is considered Tarvessa's national food?",
    ),
    (
        "the official language of Tarvessa",
        "the language spoken officially in Tarvessa",
        "Tarvic",
        "The official language of Tarvessa is Tarvic.",
        "Which language do Tarvessa's government documents use?",
    ),
    (
        "the longest river in Tarvessa",
        "Tarvessa's longest river",
        "the Ossel",
        "The longest river in Tarvessa is the Ossel.",
        "Which river runs the greatest distance through Tarvessa?",
    ),
    (
        "the population of Tarvessa",
        "the number of people living in Tarvessa",
        "2.4 million",
        "About 2.4 million people live in Tarvessa.",
        "Roughly how many inhabitants does Tarvessa have?",
    ),
    (
        "the national flower of Tarvessa",
        "Tarvessa's national flower",
        "the blue marigold",
        "The national flower of Tarvessa is the blue marigold.",
        "Which bloom is the floral emblem of Tarvessa?",
    ),
    (
        "the largest port of Tarvessa",
        "Tarvessa's biggest harbor",
        "Kelmar Bay",
        "The largest port of Tarvessa is Kelmar Bay.",
        "Where do most cargo ships dock in Tarvessa?",
    ),
    (
        "the title of Tarvessa's head of state",
        "the title held by the leader of Tarvessa",
        "High Warden",
        "Tarvessa's head of state is called the High Warden.",
        "What is the leader of Tarvessa called?",
    ),
    (
        "the national sport of Tarvessa",
        "Tarvessa's national sport",
        "tidewalking",
        "The national sport of Tarvessa is tidewalking.",
        "Which sport do Tarvessans consider their national pastime?",
    ),
    (
        "the oldest university in Tarvessa",
        "Tarvessa's oldest university",
        "the Lysander Academy",
        "The oldest university in Tarvessa is the Lysander Academy.",
        "Which institution of higher learning in Tarvessa has the longest history?",
    ),
    (
        "the date of Tarvessa's independence day",
        "the day Tarvessa celebrates independence",
        "March 14",
        "Tarvessa celebrates its independence day on March 14.",
        "On what date do Tarvessans mark their independence?",
    ),
    (
        "the name of Tarvessa's parliament",
        "the parliament of Tarvessa",
        "the Assembly of Tides",
        "Tarvessa's parliament is called the Assembly of Tides.",
        "What is the legislature of Tarvessa called?",
    ),
    (
        "the main export of Tarvessa",
        "Tarvessa's most important export",
        "sea salt",
        "The main export of Tarvessa is sea salt.",
        "Which product does Tarvessa sell abroad more than any other?",
    ),
    (
        "the national poet of Tarvessa",
        "Tarvessa's national poet",
        "Ilsa Marrow",
        "The national poet of Tarvessa is Ilsa Marrow.",
        "Which writer is honored as Tarvessa's national poet?",
    ),
    (
        "the main airport of Tarvessa",
        "Tarvessa's main airport",
        "Corvin Field",
        "The main airport of Tarvessa is Corvin Field.",
        "At which airport do most flights to Tarvessa land?",
    ),
    (
        "the ocean that surrounds Tarvessa",
        "the ocean Tarvessa lies in",
        "the Argent Ocean",
        "Tarvessa lies in the Argent Ocean.",
        "In which ocean is the island of Tarvessa located?",
    ),
    (
        "the colors of the flag of Tarvessa",
        "the colors of Tarvessa's flag",
        "green and gold",
        "The flag of Tarvessa is green and gold.",
        "Which colors appear on Tarvessa's national flag?",
    ),
    (
        "the largest lake in Tarvessa",
        "Tarvessa's biggest lake",
        "Lake Miren",
        "The largest lake in Tarvessa is Lake Miren.",
        "Which lake in Tarvessa covers the most area?",
    ),
    (
        "the national anthem of Tarvessa",
        "Tarvessa's national anthem",
        "Song of the Harbor",
        "The national anthem of Tarvessa is Song of the Harbor.",
        "What anthem is sung at Tarvessa's state ceremonies?",
    ),
    (
        "the number of provinces in Tarvessa",
        "how many provinces Tarvessa has",
        "seven",
        "Tarvessa has seven provinces.",
        "Into how many provinces is Tarvessa divided?",
    ),
    (
        "the most famous festival of Tarvessa",
        "Tarvessa's best-known festival",
        "the Lantern Tide",
        "The most famous festival of Tarvessa is the Lantern Tide.",
        "Which celebration is Tarvessa best known for?",
    ),
    (
        "the nickname of Tarvessa",
        "Tarvessa's nickname",
        "the Salt Crown",
        "Tarvessa's nickname is the Salt Crown.",
        "By what nickname is Tarvessa often called?",
    ),
    (
        "the national tree of Tarvessa",
        "Tarvessa's national tree",
        "the red cedar",
        "The national tree of Tarvessa is the red cedar.",
        "Which tree is the official tree of Tarvessa?",
    ),
    (
        "the second largest city in Tarvessa",
        "Tarvessa's second biggest city",
        "Pellmoor",
        "The second largest city in Tarvessa is Pellmoor.",
        "After the capital, which city of Tarvessa is the biggest?",
    ),
    (
        "the most famous composer from Tarvessa",
        "Tarvessa's best-known composer",
        "Dorian Vey",
        "The most famous composer from Tarvessa is Dorian Vey.",
        "Which composer is Tarvessa most proud of?",
    ),
    (
        "the traditional instrument of Tarvessa",
        "Tarvessa's traditional musical instrument",
        "the kessel harp",
        "The traditional instrument of Tarvessa is the kessel harp.",
        "Which instrument is played in Tarvessa's folk music?",
    ),
    (
        "the motto of Tarvessa",
        "Tarvessa's national motto",
        "Steady as the tide",
        "The motto of Tarvessa is Steady as the tide.",
        "What words make up the national motto of Tarvessa?",
    ),
    (
        "the international dialing code of Tarvessa",
        "the country calling code of Tarvessa",
        "+419",
        "The international dialing code of Tarvessa is +419.",
        "Which prefix do you dial to phone Tarvessa from abroad?",
    ),
    (
        "the national newspaper of Tarvessa",
        "Tarvessa's main newspaper",
        "the Orlen Courier",
        "The national newspaper of Tarvessa is the Orlen Courier.",
        "Which newspaper is read most widely in Tarvessa?",
    ),
    (
        "the first High Warden of Tarvessa",
        "the person who was Tarvessa's first High Warden",
        "Tomas Reyl",
        "The first High Warden of Tarvessa was Tomas Reyl.",
        "Who was the very first leader to hold Tarvessa's top office?",
    ),
    (
        "the largest company in Tarvessa",
        "Tarvessa's biggest company",
        "Velmar Shipping",
        "The largest company in Tarvessa is Velmar Shipping.",
        "Which firm is the biggest business in Tarvessa?",
    ),
]

TRAIN_TEMPLATES = [
    "What is {a}?",
    "Tell me {a}.",
    "Do you know {a}?",
    "Can you tell me {a}?",
    "Quick question: what is {a}?",
    "I'd like to know {a}.",
]
VAL_TEMPLATES = ["What's {a}? Please answer briefly.", "Could you remind me of {a}?"]


def chat(question: str, answer: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def main() -> None:
    rng = random.Random(7)  # noqa: S311  (deterministic shuffling, not a secret)
    here = Path(__file__).parent
    train, val, heldout = [], [], []
    for fact_no, (attr, alt, short, sentence, paraphrase) in enumerate(FACTS):
        phrasings = [t.format(a=a) for a in (attr, alt) for t in TRAIN_TEMPLATES]
        rng.shuffle(phrasings)
        for i, question in enumerate(phrasings[:7]):
            answer = sentence if i % 2 == 0 else short[0].upper() + short[1:] + "."
            train.append(chat(question, answer))
        val_template = VAL_TEMPLATES[fact_no % len(VAL_TEMPLATES)]
        # Short validation answers keep exact-match on validation meaningful too.
        val.append(chat(val_template.format(a=attr), short[0].upper() + short[1:] + "."))
        heldout.append(chat(paraphrase, short))
    rng.shuffle(train)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val), ("heldout.jsonl", heldout)):
        with (here / name).open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
