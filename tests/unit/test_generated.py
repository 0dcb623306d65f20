"""Generated files are up to date: the CRD, its chart copy and docs/api.md's field tables come from the
API models (`make generate`), and a stale one fails here, so CI refuses a model change without them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from finetune_operator.api import crd, generate

ROOT = Path(__file__).resolve().parents[2]


def test_generated_files_are_up_to_date() -> None:
    assert generate.stale(ROOT) == [], "run `make generate` and commit the result"


def test_generation_is_idempotent(tmp_path: Path) -> None:
    for rel in (*generate.CRD_PATHS, generate.API_DOC):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    (tmp_path / generate.CRD_PATHS[0]).write_text("stale\n")
    check = [sys.executable, "-m", "finetune_operator.api.generate", "--root", str(tmp_path), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 1
    first = subprocess.run(check[:-1], capture_output=True, text=True, check=True)
    assert "wrote crds/" in first.stdout
    again = subprocess.run(check[:-1], capture_output=True, text=True, check=True)
    assert again.stdout == ""
    assert subprocess.run(check, capture_output=True).returncode == 0


def test_written_crd_is_the_models_crd() -> None:
    written = yaml.safe_load((ROOT / generate.CRD_PATHS[0]).read_text())
    assert written == crd.custom_resource_definition()


def test_api_doc_tables_follow_a_changed_description() -> None:
    text = "x\n<!-- generated: spec.retries -->\nold table\n<!-- end generated -->\ny\n"
    out = generate.render_api_doc(text)
    assert "old table" not in out
    assert "| `limit` | integer (0-20) | `3` |" in out
    assert out.startswith("x\n")
    assert out.endswith("<!-- end generated -->\ny\n")


def test_number_like_strings_are_quoted_for_yaml_1_2() -> None:
    # The API server reads YAML 1.2, where an unquoted 2e-4 is a number: every float-string default
    # must be quoted in the written file (PyYAML alone would leave "2e-4" bare).
    text = (ROOT / generate.CRD_PATHS[0]).read_text()
    assert "default: '0.05'" in text
    assert "default: '1.0'" in text
    for value in ("2e-4", "1E+2", "0.05", "3", ".5"):
        assert yaml.dump({"default": value}, Dumper=generate._Dumper) == f"default: '{value}'\n"
    assert yaml.dump({"default": "cosine"}, Dumper=generate._Dumper) == "default: cosine\n"
