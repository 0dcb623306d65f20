"""The project's image references, as `make images` tags them (the project's version)."""

from __future__ import annotations

from localcluster.imagebuild import project_version

VERSION = project_version()
OPERATOR = f"finetune-operator/operator:{VERSION}"
TRAINER = f"finetune-operator/trainer:{VERSION}"
STUB = f"finetune-operator/trainer-stub:{VERSION}"
