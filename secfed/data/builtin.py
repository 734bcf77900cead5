"""A procedurally generated instruction dataset, so a federation can run with no download at all.

Every task has a short answer (a few tokens) that a program can check, which makes accuracy a
meaningful, cheap metric even for a 135M-parameter model after a little LoRA tuning, and the tasks are
distinct enough that a category-skewed split gives clients genuinely different skills to pool. Each
task has several phrasings, and some put their data in the ``context`` field (the Alpaca "input"), so
the model learns to follow instructions rather than one template.

Generation is deterministic: each category draws from its own ``random.Random`` seeded by
``(seed, category)`` (string seeding, stable across processes and platforms), so adding a category
does not change the others' records. Within a category the (instruction, context) pairs are distinct.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Collection, Sequence
from typing import Literal

from secfed.data import partition as _partition
from secfed.data.formats import Record

#: The word a client configuration's ``data`` option uses to ask for the built-in demonstration records.
BUILTIN_DATA = "builtin"

__all__ = ["CATEGORIES", "builtin_splits", "check_answer", "generate"]

CATEGORIES: tuple[str, ...] = (
    "arithmetic",
    "uppercase",
    "reverse-list",
    "count-items",
    "compare",
    "first-word",
)


def _wordlist(text: str, sep: str | None = None) -> tuple[str, ...]:
    """Word lists as plain text blocks: easier to read and extend than a column of quoted strings."""
    return tuple(w.strip() for w in text.split(sep) if w.strip())


_WORDS = _wordlist(
    """
    apple bread chair cloud river stone tiger lemon piano candle garden window pencil rabbit planet
    forest mirror button rocket silver orange yellow purple bottle basket castle dragon ocean summer
    winter spring autumn coffee butter pepper carrot tomato banana cherry grape melon mango peach
    horse camel zebra panda eagle shark whale snake mouse sheep goat duck owl fox wolf bear frog
    lamp desk book door key ring coin card map boat train plane truck bike road bridge tower hill lake
    sand snow rain wind star moon sun sky tree leaf rose lily seed root shell pearl glass paper
    clock phone radio camera ticket letter pillow blanket jacket shirt scarf glove boot hat sock
    kettle spoon fork plate bowl cup oven sink towel soap brush comb
    """
)
_NAMES = _wordlist(
    "Maria Tom Anna Lucas Sofia Omar Priya Kenji Elena David Fatima Noah Chloe Ivan Grace Mateo"
)
_OPENERS: tuple[str, ...] = ("The", "A", "My", "Our", "Every", "One", "That", "This", "Her", "His")
_ADVERBS: tuple[str, ...] = ("Yesterday", "Today", "Sometimes", "Often", "Suddenly", "Later", "Usually")
_VERBS = _wordlist(
    "found carried painted opened lost cleaned bought watched moved dropped hid washed fixed sold"
)
_PLACES = _wordlist(
    "near the lake|in the garden|at the market|before dinner|after school|in the morning|by the road", "|"
)

#: (instruction, context, response) for one record.
_Example = tuple[str, str, str]


def _items(rng: random.Random, low: int, high: int) -> list[str]:
    """A few distinct words, or (a quarter of the time) distinct lowercase letters."""
    pool: Sequence[str] = string.ascii_lowercase if rng.random() < 0.25 else _WORDS
    return rng.sample(pool, rng.randint(low, high))


def _arithmetic(rng: random.Random) -> _Example:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    if rng.random() < 0.5:
        instruction, context = rng.choice(
            [
                (f"What is {a} + {b}?", ""),
                (f"Compute {a} plus {b}.", ""),
                (f"Add {a} and {b}. Reply with the number only.", ""),
                (f"What do you get if you add {b} to {a}?", ""),
                (f"Calculate the sum of {a} and {b}.", ""),
                ("Add the two numbers given in the input.", f"{a} and {b}"),
            ]
        )
        return instruction, context, str(a + b)
    a, b = max(a, b), min(a, b)  # keep answers non-negative: one less thing for a small model to learn
    instruction, context = rng.choice(
        [
            (f"What is {a} - {b}?", ""),
            (f"Compute {a} minus {b}.", ""),
            (f"Subtract {b} from {a}.", ""),
            (f"How much is {a} take away {b}?", ""),
            (f"What is the difference between {a} and {b}?", ""),
            ("Subtract the second number in the input from the first.", f"{a}, {b}"),
        ]
    )
    return instruction, context, str(a - b)


def _uppercase(rng: random.Random) -> _Example:
    text = " ".join(rng.sample(_WORDS, 1 if rng.random() < 0.6 else 2))
    noun = "word" if " " not in text else "words"
    instruction, context = rng.choice(
        [
            (f"Write '{text}' in capital letters.", ""),
            (f"Convert to upper case: {text}", ""),
            (f"Repeat the {noun} {text} in uppercase.", ""),
            (f'Give me "{text}" written in all caps.', ""),
            (f"Rewrite '{text}' using only uppercase letters.", ""),
            ("Rewrite the text in the input in upper case.", text),
        ]
    )
    return instruction, context, text.upper()


def _reverse_list(rng: random.Random) -> _Example:
    items = _items(rng, 3, 4)
    shown = ", ".join(items)
    instruction, context = rng.choice(
        [
            (f"Reverse this list: {shown}", ""),
            (f"Write these items in reverse order: {shown}", ""),
            (f"List {shown} backwards.", ""),
            (f"Put the following in the opposite order: {shown}", ""),
            (f"Reverse the order of [{shown}].", ""),
            ("Reverse the order of the items in the input.", shown),
        ]
    )
    return instruction, context, ", ".join(reversed(items))


def _count_items(rng: random.Random) -> _Example:
    items = _items(rng, 2, 7)
    shown = ", ".join(items)
    instruction, context = rng.choice(
        [
            (f"How many items are in this list: {shown}?", ""),
            (f"Count the words: {shown}", ""),
            (f"How many things are listed here? {shown}", ""),
            (f"Tell me the number of entries in: {shown}", ""),
            (f"Count the items in [{shown}] and give the number.", ""),
            ("How many items does the list in the input have?", shown),
        ]
    )
    return instruction, context, str(len(items))


def _compare(rng: random.Random) -> _Example:
    a, b = rng.sample(range(100), 2)
    if rng.random() < 0.5:
        instruction, context = rng.choice(
            [
                (f"Which number is larger, {a} or {b}?", ""),
                (f"Which is bigger: {a} or {b}?", ""),
                (f"Name the greater of {a} and {b}.", ""),
                (f"Out of {a} and {b}, which is more?", ""),
                ("Which of the two numbers in the input is larger?", f"{a} and {b}"),
            ]
        )
        return instruction, context, str(max(a, b))
    instruction, context = rng.choice(
        [
            (f"Which number is smaller, {a} or {b}?", ""),
            (f"Which is less: {a} or {b}?", ""),
            (f"Give the smaller of {a} and {b}.", ""),
            (f"Out of {a} and {b}, which is lower?", ""),
            ("Which of the two numbers in the input is smaller?", f"{a} and {b}"),
        ]
    )
    return instruction, context, str(min(a, b))


def _first_word(rng: random.Random) -> _Example:
    kind = rng.random()
    if kind < 0.35:
        subject = rng.choice(_NAMES)
    elif kind < 0.8:
        subject = f"{rng.choice(_OPENERS)} {rng.choice(_WORDS)}"
    else:
        subject = f"{rng.choice(_ADVERBS)} {rng.choice(_NAMES)}"
    sentence = f"{subject} {rng.choice(_VERBS)} the {rng.choice(_WORDS)} {rng.choice(_PLACES)}."
    instruction, context = rng.choice(
        [
            (f"What is the first word of this sentence: {sentence}", ""),
            (f"Give the first word of the following sentence. {sentence}", ""),
            (f'Which word comes first in "{sentence}"?', ""),
            (f"Write only the first word of: {sentence}", ""),
            ("Tell me the first word of the sentence in the input.", sentence),
        ]
    )
    return instruction, context, sentence.split()[0]


_GENERATORS: dict[str, Callable[[random.Random], _Example]] = {
    "arithmetic": _arithmetic,
    "uppercase": _uppercase,
    "reverse-list": _reverse_list,
    "count-items": _count_items,
    "compare": _compare,
    "first-word": _first_word,
}


def _categories(categories: Sequence[str] | None) -> tuple[str, ...]:
    chosen = CATEGORIES if categories is None else tuple(categories)
    unknown = [c for c in chosen if c not in _GENERATORS]
    if unknown:
        raise ValueError(f"unknown builtin categories {unknown}; known: {list(CATEGORIES)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"builtin categories repeated: {list(chosen)}")
    return chosen


def _generate(
    n_per_category: int,
    seed: int,
    categories: Sequence[str] | None,
    exclude: Collection[tuple[str, str]] = (),
) -> list[Record]:
    """Draw distinct records per category, skipping any (instruction, context) in ``exclude``.

    Each record depends only on the ones before it in its category's stream, so asking for more
    records extends the list without changing its start, and excluding keys only drops those records.
    """
    if n_per_category < 0:
        raise ValueError(f"n_per_category must be >= 0, got {n_per_category}")
    out: list[Record] = []
    for category in _categories(categories):
        # Not for secrets: a reproducible stream per (seed, category).
        rng = random.Random(f"secfed-builtin/{seed}/{category}")  # noqa: S311
        seen: set[tuple[str, str]] = set()
        made = 0
        for _attempt in range(50 * n_per_category + 1000):
            if made == n_per_category:
                break
            instruction, context, response = _GENERATORS[category](rng)
            key = (instruction, context)
            if key in seen or key in exclude:
                continue
            seen.add(key)
            out.append(Record(instruction, context, response, category, source=f"builtin:{category}:{made}"))
            made += 1
        if made < n_per_category:
            raise ValueError(f"builtin category {category!r} ran out of distinct examples at {made}")
    return out


def generate(n_per_category: int, seed: int, categories: Sequence[str] | None = None) -> list[Record]:
    """``n_per_category`` distinct records of each category (all of :data:`CATEGORIES` by default).

    Records come grouped by category in the order given; ``source`` is ``builtin:<category>:<i>``.
    """
    return _generate(n_per_category, seed, categories)


# ---------------------------------------------------------------------------------------------- checking

_STRIP = string.punctuation + string.whitespace + "“”‘’«»"
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        _wordlist(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen twenty"
        )
    )
}
_NUMBER = re.compile(r"-?\d+|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,;]+")


def _first_line(answer: str) -> str:
    return next((line.strip() for line in answer.splitlines() if line.strip()), "")


def _candidates(answer: str) -> list[str]:
    """Places an answer may sit in the first line: after ``=``, after ``:``, or the whole line.

    Models often echo the question ("23 + 7 = 30") or announce the answer ("Answer: 30").
    """
    line = _first_line(answer)
    found = [line.rsplit(sep, 1)[1].strip() for sep in ("=", ":") if sep in line]
    return [c for c in [*found, line] if c]


def _words(text: str) -> list[str]:
    return [w for w in (w.strip(_STRIP) for w in _SEPARATORS.split(text)) if w]


def _number(text: str) -> int | None:
    match = _NUMBER.search(text)
    if match is None:
        return None
    token = match.group(0).lower()
    return _NUMBER_WORDS[token] if token in _NUMBER_WORDS else int(token)


def check_answer(record: Record, answer: str) -> bool:
    """Whether a generated ``answer`` solves ``record``; tolerant of how a model phrases it.

    Only the first non-empty line counts (a model often rambles after answering), surrounding quotes
    and punctuation are ignored, and the answer may follow ``=`` or ``:``. Numeric tasks take the first
    number (digits, or a number word up to twenty); ``uppercase`` is case-sensitive since case is the
    task; list and word tasks are not. Records from other datasets are compared as normalised text.
    """
    candidates = _candidates(answer)
    category = record.category
    if category in ("arithmetic", "count-items", "compare"):
        for text in candidates:
            value = _number(text)
            if value is not None:
                return str(value) == record.response.strip()
        return False
    if category == "uppercase":
        expected = _words(record.response)
        return any(_words(text) == expected for text in candidates)
    if category == "reverse-list":
        expected = [w.lower() for w in _words(record.response)]
        return any([w.lower() for w in _words(text) if w.lower() != "and"] == expected for text in candidates)
    if category == "first-word":
        expected_word = record.response.strip(_STRIP).casefold()
        return any((_words(text) or [""])[0].casefold() == expected_word for text in candidates)
    reference = " ".join(_words(_first_line(record.response))).casefold()
    return any(" ".join(_words(text)).casefold() == reference for text in candidates)


# ------------------------------------------------------------------------------------------------ splits


def builtin_splits(
    n_clients: int,
    *,
    train_per_category: int,
    test_per_category: int,
    seed: int = 0,
    partition: Literal["iid", "category", "dirichlet"] = "category",
    alpha: float = 0.5,
) -> tuple[list[list[Record]], list[Record]]:
    """Per-client training sets and one shared test set, for simulated or real federations.

    Train and test come from disjoint seeds (``2*seed`` and ``2*seed+1``) and, beyond that, no
    (instruction, context) pair of the test set appears in training, so test accuracy measures
    generalisation, not recall. Every client calling this with the same arguments gets the same
    split, so each institution can take its own share (``splits[client_index]``) without coordination.
    ``partition`` is as in :mod:`secfed.data.partition` (``category``: 2 shards per client).
    """
    test = _generate(test_per_category, 2 * seed + 1, None)
    held = {(r.instruction, r.context) for r in test}
    train = _generate(train_per_category, 2 * seed, None, exclude=held)
    if partition == "iid":
        parts = _partition.iid(train, n_clients, seed)
    elif partition == "category":
        parts = _partition.category_shards(train, n_clients, shards_per_client=2, seed=seed)
    elif partition == "dirichlet":
        parts = _partition.dirichlet(train, n_clients, alpha, seed)
    else:
        raise ValueError(f"unknown partition {partition!r}; expected 'iid', 'category' or 'dirichlet'")
    return parts, test
