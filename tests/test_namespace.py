"""Import rules, checked on the source: every import names the ``overdrive`` namespace, and no
role package imports another, except the server's use of the pure policy engine (the same
``rollout_policies.decide`` runs in the server and in ``overdrive simulate``). The core
``overdrive`` package imports no role package (the root CLI names their modules as strings and
imports them only when a command runs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("server", "client", "signing", "rollout_policies")
ALLOWED = {"server": ("overdrive.rollout_policies",)}
"""Role packages a role may import: the server judges campaigns with the policy engine."""
TREES = (*ROLES, "overdrive", "tests", "bench")


def python_files(tree: str) -> list[Path]:
    return sorted(p for p in (ROOT / tree).rglob("*.py") if ".cache" not in p.parts)


def imported(path: Path) -> list[str]:
    """Every module name ``path`` imports (absolute imports only: the project uses no others)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


@pytest.mark.parametrize("tree", TREES)
def test_imports_name_the_overdrive_namespace(tree: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files(tree)
        for name in imported(path)
        if name.split(".")[0] in ROLES
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("role", ROLES)
def test_role_packages_never_import_each_other(role: str) -> None:
    others = tuple(f"overdrive.{r}" for r in ROLES if r != role)
    allowed = ALLOWED.get(role, ())
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files(role)
        for name in imported(path)
        if name.split(".")[:2] != ["overdrive", role]
        and name.startswith(others)
        and not name.startswith(allowed)
    ]
    assert not wrong, wrong


def test_the_core_imports_no_role_package() -> None:
    roles = tuple(f"overdrive.{r}" for r in ROLES)
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in python_files("overdrive")
        if path.relative_to(ROOT / "overdrive").parts[0] not in ROLES  # the symlinked roles
        for name in imported(path)
        if name.startswith(roles)
    ]
    assert not wrong, wrong
