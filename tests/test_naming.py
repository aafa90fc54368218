"""One `slug` spells run files and study folders, each as it always has: the names already on disk stay found."""

from __future__ import annotations

import pytest

from repinv.naming import slug
from repinv.study import FOLDER, folder_name


@pytest.mark.parametrize("text,file,folder", [
    ("blocks.5", "blocks.5", "blocks.5"),
    ("tabby, tabby cat", "tabby-tabby-cat", "tabby_tabby_cat"),
    ("photo - 1", "photo---1", "photo_-_1"),
    ("vit_b__32", "vit_b__32", "vit_b_32"),
    ("/weights/vit b.safetensors", "weights-vit-b.safetensors", "weights_vit_b.safetensors"),
])
def test_file_and_folder_spellings(text, file, folder):
    assert slug(text) == file and slug(text, **FOLDER) == folder


def test_a_file_name_is_never_empty():
    assert slug("???") == "x"


def test_a_study_folder_name_is_spelled_as_before():
    overrides = ("model=vit_b_32", "seed=1", "surgery=trained_input_untrained_encoders")
    assert folder_name(overrides) == "vit_b_32-trained_input_untrained_encoders-seed1-d4a42dceab"
