"""The built-in dataset: deterministic, self-consistent, checkable, and with a leak-free test split."""

from __future__ import annotations

from collections import Counter

import pytest

from secfed.data.builtin import CATEGORIES, builtin_splits, check_answer, generate
from secfed.data.formats import Record

N = 200


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return generate(N, seed=7)


def test_counts_sources_and_distinctness(records: list[Record]) -> None:
    assert 5 <= len(CATEGORIES) <= 8
    assert Counter(r.category for r in records) == dict.fromkeys(CATEGORIES, N)
    for category in CATEGORIES:
        mine = [r for r in records if r.category == category]
        assert [r.source for r in mine] == [f"builtin:{category}:{i}" for i in range(N)]
        assert len({(r.instruction, r.context) for r in mine}) == N
        assert len({r.instruction for r in mine}) > 20  # several phrasings, not one template
    assert any(r.context for r in records) and any(not r.context for r in records)


def test_answers_are_short(records: list[Record]) -> None:
    assert max(len(r.response.split()) for r in records) <= 4
    assert max(len(r.response) for r in records) <= 40


def test_every_record_accepts_its_own_response(records: list[Record]) -> None:
    assert all(check_answer(r, r.response) for r in records)


def test_generation_is_deterministic_and_seeded() -> None:
    assert generate(30, seed=1) == generate(30, seed=1)
    assert generate(30, seed=1) != generate(30, seed=2)
    # A category's records do not depend on which other categories are generated, nor on how many.
    only = generate(30, seed=1, categories=["compare"])
    assert only == [r for r in generate(30, seed=1) if r.category == "compare"]
    assert generate(50, seed=1, categories=["compare"])[:30] == only


def test_unknown_category_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown builtin categories"):
        generate(1, seed=0, categories=["poetry"])


def _one(category: str, response: str, instruction: str = "?") -> Record:
    return Record(instruction, "", response, category)


@pytest.mark.parametrize(
    ("category", "response", "accepted", "rejected"),
    [
        (
            "arithmetic",
            "30",
            ["30", " 30.\n", "23 + 7 = 30", "The answer is: 30", "30\nbecause 23+7"],
            ["31", "", "3", "23 + 7 = 31", "no idea"],
        ),
        (
            "count-items",
            "4",
            ["4", "four", "There are 4 items.", "Answer: Four"],
            ["5", "three", "44", "none"],
        ),
        ("compare", "41", ["41", "41 is larger.", "'41'"], ["17", "17 is smaller", "4"]),
        (
            "uppercase",
            "GREEN APPLE",
            ["GREEN APPLE", '"GREEN APPLE".', "Answer: GREEN APPLE"],
            ["green apple", "Green Apple", "GREEN", "GREEN APPLE PIE"],
        ),
        (
            "reverse-list",
            "sun, dog, cat",
            ["sun, dog, cat", "Sun, Dog, Cat.", "[sun, dog, cat]", "sun dog cat", "sun, dog and cat"],
            ["cat, dog, sun", "sun, dog", "sun, cat, dog"],
        ),
        (
            "first-word",
            "Maria",
            ["Maria", "maria", "Maria.", '"Maria"', "The first word is: Maria"],
            ["The", "Mario", "Maria's", ""],
        ),
    ],
)
def test_check_answer_accepts_variants_and_rejects_wrong(category, response, accepted, rejected) -> None:
    record = _one(category, response)
    for answer in accepted:
        assert check_answer(record, answer), answer
    for answer in rejected:
        assert not check_answer(record, answer), answer


def test_check_answer_rejects_other_records_answers(records: list[Record]) -> None:
    """A response is accepted for its own record and (almost) never for another of the same category."""
    for category in CATEGORIES:
        mine = [r for r in records if r.category == category][:40]
        for r in mine:
            wrong = [
                o.response for o in mine if o.response.strip().casefold() != r.response.strip().casefold()
            ]
            assert wrong and not any(check_answer(r, w) for w in wrong[:10])


def test_check_answer_for_other_datasets_is_normalised_exact_match() -> None:
    record = Record("Capital of France?", "", "Paris", "open_qa")
    assert check_answer(record, "paris.")
    assert not check_answer(record, "Lyon")


@pytest.mark.parametrize("partition", ["iid", "category", "dirichlet"])
def test_splits_are_disjoint_and_complete(partition) -> None:
    train_per, test_per = 60, 20
    parts, test = builtin_splits(
        4, train_per_category=train_per, test_per_category=test_per, seed=3, partition=partition
    )
    assert len(parts) == 4 and all(parts)
    train = [r for p in parts for r in p]
    assert Counter(r.category for r in train) == dict.fromkeys(CATEGORIES, train_per)
    assert Counter(r.category for r in test) == dict.fromkeys(CATEGORIES, test_per)
    # What the model sees of a record is its instruction together with its context.
    train_keys = {(r.instruction, r.context) for r in train}
    assert not train_keys & {(r.instruction, r.context) for r in test}
    # Records without a context carry all their data in the instruction, so those never repeat either.
    assert not {r.instruction for r in train if not r.context} & {
        r.instruction for r in test if not r.context
    }
    again, test_again = builtin_splits(
        4, train_per_category=train_per, test_per_category=test_per, seed=3, partition=partition
    )
    assert again == parts and test_again == test


def test_category_partition_gives_clients_few_categories() -> None:
    parts, _ = builtin_splits(3, train_per_category=40, test_per_category=5)
    for part in parts:  # 6 categories, 6 equal shards: each client holds two whole categories
        assert len({r.category for r in part}) == 2


def test_splits_exclude_test_items_even_when_the_space_is_small() -> None:
    parts, test = builtin_splits(2, train_per_category=2000, test_per_category=500, seed=0, partition="iid")
    train_keys = {(r.instruction, r.context) for p in parts for r in p}
    assert len(train_keys) == 2000 * len(CATEGORIES)
    assert not train_keys & {(r.instruction, r.context) for r in test}


def test_unknown_partition_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown partition"):
        builtin_splits(2, train_per_category=5, test_per_category=1, partition="random")  # type: ignore[arg-type]
