from __future__ import annotations

import pytest

from tasks.model.taxonomy import Taxonomy, available_taxonomies, load_taxonomy


def test_shipped_taxonomies() -> None:
    assert {"digits", "hotel"} <= set(available_taxonomies())
    hotel = load_taxonomy("hotel")
    assert len(hotel.labels) == 26
    assert {"Room", "Lobby", "Pool", "Restaurant", "Terrace/Patio"} <= set(hotel.labels)
    assert load_taxonomy("digits").labels == tuple(str(i) for i in range(10))


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("room", "Room"),
        ("  terrace/PATIO ", "Terrace/Patio"),
        ("Food   and dining", "Food and Dining"),
        ("Gym", "Fitness Facility"),
        ("lift", "Staircase/Elevator"),
        ("Kitchen", None),
        ("", None),
    ],
)
def test_labels_match_ignoring_case_space_and_synonyms(text: str, label: str | None) -> None:
    assert load_taxonomy("hotel").match(text) == label


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("this is a photo of Terrace/Patio.", "Terrace/Patio"),
        (" This is a photo of room ", "Room"),
        ("this is a photo of a Pool.", "Pool"),
        ("this is a photo of Hot springs.", "Hot springs"),
        ("this is a photo of Pool and Bar.", None),  # two labels: not an answer
        ("I think this is a photo of Pool.", None),  # chatter around the answer
        ("Pool", None),  # the bare label is not the trained answer format
        ("this is a photo of Hot", None),  # a prefix of a label is not the label
        ("this is a photo of Kitchen.", None),
        ("", None),
        (None, None),
    ],
)
def test_answer_parser_is_strict(answer: str | None, label: str | None) -> None:
    assert load_taxonomy("hotel").parse_answer(answer) == label


def test_prompt_lists_every_label_and_answers_round_trip() -> None:
    hotel = load_taxonomy("hotel")
    prompt = hotel.prompt()
    assert all(label in prompt for label in hotel.labels)
    assert all(hotel.parse_answer(hotel.answer(label)) == label for label in hotel.labels)


def test_duplicate_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        Taxonomy(name="bad", labels=("Room", "room "))


def test_unknown_taxonomy_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"available: .*digits"):
        load_taxonomy("nope")
