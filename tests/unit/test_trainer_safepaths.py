"""Names from outside (S3 keys, Hub file names) stay inside the directory they are written to."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.safepaths import contained, escapes


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "", "a/..", "..\\..\\x", "a/../b"])
def test_names_that_leave_the_directory(rel: str) -> None:
    assert escapes(rel)
    with pytest.raises(ValueError, match="outside"):
        contained(Path("/scratch/model"), rel)


@pytest.mark.parametrize("rel", ["config.json", "a/b/c.safetensors", "..hidden", "a..b/x", "./x"])
def test_names_that_stay(rel: str) -> None:
    assert not escapes(rel)
    assert contained(Path("/scratch/model"), rel).is_relative_to("/scratch/model")
