"""Parsing of the classes a user types."""

import numpy as np
import pytest

from segearth_qgis.core import Vocabulary


def test_parse_lines_synonyms_and_blanks():
    vocab = Vocabulary.parse("background\n building , roof,house \n\n water,river\n,\n")
    assert vocab.classes == (("background",), ("building", "roof", "house"), ("water", "river"))
    assert vocab.class_names == ["background", "building", "water"]
    assert vocab.queries == ["background", "building", "roof", "house", "water", "river"]
    np.testing.assert_array_equal(vocab.query_class, [0, 1, 1, 1, 2, 2])
    assert len(vocab) == 3
    assert Vocabulary.parse(vocab.to_text()) == vocab


def test_from_classes_accepts_names_and_synonym_lists():
    assert Vocabulary.from_classes(["road", ["tree", "forest"]]).queries == ["road", "tree", "forest"]


@pytest.mark.parametrize("text", ["", "\n \n", " , ,\n"])
def test_empty_vocabulary_is_a_clear_error(text):
    with pytest.raises(ValueError, match="one class per line"):
        Vocabulary.parse(text)


def test_control_characters_are_refused_by_line():
    with pytest.raises(ValueError) as raised:
        Vocabulary.parse("background\n\nbell\x07 tower,bell\nroad")
    assert str(raised.value) == "class line 3 contains the control character U+0007: remove it"
    with pytest.raises(ValueError, match=r"class line 1 contains the control character U\+0000: remove it"):
        Vocabulary.from_classes(["nul\x00"])
    assert Vocabulary.parse("tall\ttree\n").class_names == ["tall\ttree"]
