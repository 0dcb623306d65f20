"""The uninstall hook's finalizer removal, as a pure function (the hook itself runs in the Helm test)."""

from __future__ import annotations

from finetune_operator.release import without_ours
from finetune_operator.settings import FINALIZER


def test_only_our_finalizer_is_taken_off() -> None:
    assert without_ours([FINALIZER]) == []
    assert without_ours(["other.io/keep", FINALIZER]) == ["other.io/keep"]
    assert without_ours(["other.io/keep"]) is None
    assert without_ours(None) is None
