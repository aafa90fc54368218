"""ImageNet class specs resolve to indices; bad ones say what would be right."""

from __future__ import annotations

import re

import pytest

from repinv.errors import RepinvError
from repinv.inputs.classes import class_name, resolve_class


@pytest.mark.parametrize("spec, index", [
    ("golden retriever", 207), ("Golden_Retriever", 207), ("Carassius auratus", 1), ("n01443537", 1),
    (0, 0), ("999", 999),
])
def test_indices_names_synonyms_and_wordnet_ids_resolve(spec, index):
    assert resolve_class(spec, 1000) == index


def test_display_names_come_from_timm_and_other_heads_show_indices():
    assert (class_name(207), class_name(1), class_name(3, num_classes=10)) == ("golden retriever", "goldfish", "3")


@pytest.mark.parametrize("spec, num_classes, words", [
    ("goldfsh", 1000, ["not an ImageNet class name", "'goldfish'"]),
    ("crane", 1000, ["134: crane", "517: crane", "index"]),
    (1000, 1000, ["out of range", "0 to 999"]),
    ("goldfish", 10, ["10 classes", "indices"]),
])
def test_bad_class_specs_name_what_would_be_right(spec, num_classes, words):
    with pytest.raises(RepinvError, match=re.escape(words[0])) as err:
        resolve_class(spec, num_classes)
    assert all(w in str(err.value) for w in words), str(err.value)
