"""The operator image's Python content, built the way operator/Dockerfile builds it: a fresh venv with
only the pinned operator dependencies, plus the contract and operator packages and nothing else. Every
operator module must import there (the first round's image crashed on an import of the trainer), and
neither the trainer nor the local environment may be reachable."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "operator" / "Dockerfile").read_text()


def test_every_operator_module_imports_with_only_the_operator_dependencies(tmp_path: Path) -> None:
    pins = re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', DOCKERFILE)
    assert pins, "no pinned dependencies found in operator/Dockerfile"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
        check=True,
        timeout=600,
    )
    # What the Dockerfile COPYs, and only that.
    site = tmp_path / "site"
    for src in re.findall(r"^COPY (?!--from)(\S+)/ ", DOCKERFILE, re.MULTILINE):
        shutil.copytree(REPO / src, site / Path(src).name)
    assert sorted(p.name for p in site.iterdir()) == ["finetune_contract", "finetune_operator"]
    probe = """
import importlib, pkgutil, sys
import finetune_operator
names = [m.name for m in pkgutil.walk_packages(finetune_operator.__path__, "finetune_operator.")]
for name in names:
    importlib.import_module(name)
for absent in ("finetune_trainer", "localcluster", "torch"):
    try:
        importlib.import_module(absent)
    except ImportError:
        pass
    else:
        sys.exit(f"{absent} is importable in the operator image")
print(len(names))
"""
    # -I: isolated (no user site, no PYTHONPATH, no current directory), as in the image.
    out = subprocess.run(
        [str(python), "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n{probe}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 15  # handlers, service, reconcile, manifests, api.* ...
    assert sys.executable != str(python)
