"""The one partial-tag hold-back every streaming parser uses."""

from mlxollama.parsers.holdback import held_back
from mlxollama.parsers.stops import StopMatcher


def test_held_back_is_the_longest_suffix_that_starts_a_tag():
    assert held_back("hello <th", "<think>") == 3
    assert held_back("hello <think", "<think>") == 6
    assert held_back("hello", "<think>") == 0
    assert held_back("", "<think>") == 0
    # a whole tag is not held back: the caller has already found it
    assert held_back("a<think>", "<think>") == 0
    # several tags: the longest candidate wins, whichever tag it belongs to
    assert held_back("x<|ca", ("<|end|>", "<|call|>")) == 4
    assert held_back("x<|", ("<|end|>", "<|call|>")) == 2


def test_stop_text_split_across_chunks_never_leaks():
    m = StopMatcher(["STOP", "END"])
    assert m.feed("abc ST") == "abc "
    assert m.feed("O") == ""
    assert m.feed("x E") == "STOx "
    assert m.feed("ND and more") == ""
    assert m.stopped
    assert m.flush() == ""


def test_held_text_that_never_became_a_stop_is_flushed():
    m = StopMatcher(["STOP"])
    assert m.feed("the ST") == "the "
    assert m.flush() == "ST"
