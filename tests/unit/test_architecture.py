"""The shape stays: every module imports, and each package imports only what docs/architecture.md allows.

Imports inside functions count too: a late import is still a dependency.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("notifier", "tasks", "entrypoints", "sandbox", "chaos", "celeryconfig")

# Area -> the other areas it may import (docs/architecture.md, "Who may import what").
PRODUCT_BASE = {"notifier.settings"}
ALLOWED: dict[str, set[str]] = {
    "notifier.settings": set(),
    # The app registry: which credentials each app sends with; read by every layer that names an app.
    "notifier.apps": PRODUCT_BASE,
    "notifier.queues": set(),
    "notifier.outages": set(),
    "notifier.store": PRODUCT_BASE,
    "notifier.content": PRODUCT_BASE,
    "notifier.ops": PRODUCT_BASE | {"notifier.store", "notifier.queues"},
    "notifier.providers": PRODUCT_BASE | {"notifier.apps", "notifier.store", "notifier.ops", "notifier.intake",
                                          "notifier.accounts"},
    "notifier.pipeline": PRODUCT_BASE | {"notifier.apps", "notifier.store", "notifier.ops", "notifier.intake",
                                         "notifier.providers", "notifier.queues", "notifier.content"},
    "notifier.intake": PRODUCT_BASE | {"notifier.apps", "notifier.store", "notifier.ops", "notifier.pipeline",
                                       "notifier.outages", "notifier.content"},
    "notifier.accounts": PRODUCT_BASE | {"notifier.apps", "notifier.store", "notifier.ops", "notifier.intake",
                                         "notifier.pipeline"},
    "notifier.callbacks": PRODUCT_BASE | {"notifier.apps", "notifier.store", "notifier.ops"},
    # The producer facade: names re-exported lazily (its table is checked below), nothing imported.
    "notifier": set(),
    "celeryconfig": PRODUCT_BASE | {"notifier.store", "notifier.queues"},
    "tasks": {"notifier.*", "celeryconfig"},
    "entrypoints": {"notifier.*", "notifier", "tasks", "celeryconfig", "sandbox"},
    "sandbox": {"notifier.*", "notifier", "tasks", "celeryconfig"},
    "chaos": {"notifier.*", "notifier", "tasks", "celeryconfig", "sandbox"},
}


def _modules() -> list[str]:
    names = ["celeryconfig"]
    for package in ("notifier", "tasks", "entrypoints", "sandbox", "chaos"):
        names.append(package)
        path = [str(ROOT / package)]
        names += [m.name for m in pkgutil.walk_packages(path, package + ".")]
    return sorted(names)


MODULES = _modules()


def _area(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "notifier" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def _file(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """Every first-party module `module` imports, anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(_file(module).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from package import module` names a module; `from module import name` does not.
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return {name for name in found if name.split(".")[0] in TOP_LEVEL}


def _allowed(area: str, target: str) -> bool:
    rules = ALLOWED[area]
    return target == area or target in rules or ("notifier.*" in rules and target.startswith("notifier."))


@pytest.mark.parametrize("module", [m for m in MODULES if not m.endswith(".__main__")])  # those run a program
def test_every_module_imports(module):
    importlib.import_module(module)


def test_every_area_has_a_rule():
    assert {_area(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_only_what_its_package_may(module):
    area = _area(module)
    refused = sorted(t for t in _imports(module) if not _allowed(area, _area(t)))
    assert not refused, f"{module} ({area}) may not import {refused}: see docs/architecture.md"


def test_the_product_never_reaches_for_celery_the_sandbox_or_the_entry_points():
    for module in MODULES:
        if module.startswith("notifier"):
            reached = {_area(t) for t in _imports(module)} & {"tasks", "celeryconfig", "sandbox", "entrypoints"}
            assert not reached, f"{module} imports {reached}"


def test_the_producer_facade_names_only_product_modules_and_the_producer_tasks():
    import notifier

    assert set(notifier._LAZY.values()) <= {m for m in MODULES if m.startswith("notifier.")} | {"tasks.pipeline"}
    for name in notifier.__all__:
        assert getattr(notifier, name) is not None


def test_tests_keep_their_own_shape():
    for path in (ROOT / "tests").rglob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
        assert not {m for m in imported if m.startswith("tests.conftest")}, f"{path} imports from tests.conftest"
        if "unit" in path.parts:
            assert not {m for m in imported if m.startswith("tests.integration")}, \
                f"{path}: a unit test needs nothing from the integration suite"
