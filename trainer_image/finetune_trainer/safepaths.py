"""Paths built from names that come from outside (S3 keys, Hub file names, a PVC's symlinks).

An object named `../../etc/x` or `/abs` must not be written outside the directory it is downloaded
into, and a symlink on a mounted volume must not make the trainer read files beside the model.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


def escapes(rel: str) -> bool:
    """True when `rel`, joined to a directory, would leave it (absolute, `..`, or empty)."""
    pure = PurePosixPath(rel)
    return rel == "" or pure.is_absolute() or ".." in pure.parts or "\\" in rel


def contained(root: Path, rel: str) -> Path:
    """root/rel; ValueError (naming `rel`) when it would leave root."""
    if escapes(rel):
        raise ValueError(f"{rel!r} would be written outside {root}")
    return root / rel


def resolves_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink followed, is `root` or below it."""
    return path.resolve().is_relative_to(root.resolve())
