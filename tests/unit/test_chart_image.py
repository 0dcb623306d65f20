"""operator/Dockerfile: non-root, pinned, small, and in step with pyproject.toml and the chart."""

from __future__ import annotations

import re
import tomllib

import yaml

from tests.support.helm import CHART, REPO

DOCKERFILE = (REPO / "operator" / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_runs_as_the_non_root_user_the_chart_declares() -> None:
    users = [arg for word, arg in instructions() if word == "USER"]
    assert users
    assert users[-1] == "65532:65532"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 65532


def test_base_image_is_pinned_and_slim() -> None:
    (arg,) = [a for w, a in instructions() if w == "ARG" and a.startswith("PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), image
    froms = [a for w, a in instructions() if w == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]  # two stages, one pinned base


def test_dependencies_are_the_pinned_operator_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["operator"])
    pinned = set(re.findall(r'"([A-Za-z0-9_.-]+==[^"]+)"', DOCKERFILE))
    assert pinned == wanted, f"Dockerfile pins {sorted(pinned)}, pyproject wants {sorted(wanted)}"


def test_final_stage_holds_only_the_operator_and_its_venv() -> None:
    final = DOCKERFILE.split("\nFROM ${PYTHON_IMAGE}\n", 1)[1]
    assert "pip install" not in final
    assert "apt-get" not in final
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert "trainer" not in DOCKERFILE.replace("not the trainer", "")
    assert 'ENTRYPOINT ["python", "-m", "finetune_operator"]' in final
    # Read-only root filesystem: bytecode is compiled at build time, never written at run time.
    assert "compileall" in DOCKERFILE
    assert "PYTHONDONTWRITEBYTECODE=1" in final
