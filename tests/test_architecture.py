"""The layer contract (pyproject ``[tool.importlinter]``) holds, covers every package, and has teeth.

The contract itself is checked by import-linter on the working tree; its teeth by breaking it on a
temporary copy (a foundation module importing the compound daemon, the district importing the
gateway) and seeing ``lint-imports`` fail there and name the import. The GA/T 1400 double under
``tests/viid_double`` must import nothing of the product (it stands for the city, written from the
standard); import-linter cannot say that (its roots must be exactly the shipped packages, and
``tests`` is not one), so an ``ast`` walk checks it, following the double's imports of other test
modules. The MQTT rule (only
``foundation.mqtt`` imports aiomqtt/paho) is ruff's banned-api rule, checked the same way.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
RUFF = Path(sys.executable).with_name("ruff")


def _contract() -> dict[str, object]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return settings["tool"]["importlinter"]  # type: ignore[no-any-return]


def _our_packages(tree: Path) -> set[str]:
    """Every top-level directory with an ``__init__.py`` that pyproject ships."""
    settings = tomllib.loads((tree / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = {
        pattern.rstrip("*") for pattern in settings["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    return {p.name for p in tree.iterdir() if (p / "__init__.py").is_file() and p.name in shipped}


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for package in _our_packages(ROOT):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_shipped_package_is_in_the_contract() -> None:
    """A new top-level package cannot slip past the layers: each one is a root and sits in a layer."""
    contract = _contract()
    roots = set(contract["root_packages"])  # type: ignore[call-overload]
    assert roots == _our_packages(ROOT)
    (layers,) = [c["layers"] for c in contract["contracts"] if c["type"] == "layers"]  # type: ignore[attr-defined]
    in_layers = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    assert in_layers == roots
    assert all("ignore_imports" not in c for c in contract["contracts"])  # type: ignore[attr-defined]


def test_the_layers_hold() -> None:
    """The working tree keeps the contract."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module", "reversed_import"),
    [
        ("foundation/events.py", "import gateway.outbox"),  # the foundation reaching up
        ("district/operations.py", "import gateway.config"),  # one side importing the other
        ("adapters/plates.py", "import uplink.protocol"),  # siblings of one layer
    ],
)
def test_a_reversed_import_breaks_the_contract(tmp_path: Path, module: str, reversed_import: str) -> None:
    """On a copy with one forbidden import added, ``lint-imports`` fails and names that import."""
    tree = _copy(tmp_path)
    assert _lint_imports(tree).returncode == 0  # the copy itself is sound
    target = tree / module
    target.write_text(target.read_text(encoding="utf-8") + f"\n{reversed_import}  # noqa\n", encoding="utf-8")
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    imported = reversed_import.removeprefix("import ")
    assert f"{importer} -> {imported}" in result.stdout


def test_only_the_mqtt_port_imports_the_mqtt_library(tmp_path: Path) -> None:
    """Ruff's banned-api rule passes on the tree and fails on a copy where the gateway imports aiomqtt."""
    clean = subprocess.run(
        [str(RUFF), "check", "--select", "TID251,SLF001", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert clean.returncode == 0, clean.stdout
    tree = _copy(tmp_path)
    (tree / "gateway" / "sneaky.py").write_text(
        '"""Reaches past the port."""\n\nimport aiomqtt\n\nCLIENT = aiomqtt.Client\n'
    )
    (tree / "district" / "sneaky.py").write_text(
        '"""Reaches into paho."""\n\nfrom paho.mqtt import client\n\nCLIENT = client\n'
    )
    broken = subprocess.run(
        [str(RUFF), "check", "--select", "TID251", "gateway/sneaky.py", "district/sneaky.py"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode != 0
    assert "gateway/sneaky.py" in broken.stdout
    assert "district/sneaky.py" in broken.stdout


def _module_files(tree: Path, module: str) -> dict[str, Path]:
    """Module name -> file for a module or (every module of) a package; empty if it is not in ``tree``."""
    base = tree.joinpath(*module.split("."))
    if base.is_dir():
        return {
            module if f.stem == "__init__" else f"{module}.{f.stem}": f for f in sorted(base.glob("*.py"))
        }
    return {module: base.with_suffix(".py")} if base.with_suffix(".py").is_file() else {}


def _imports_of(name: str, file: Path) -> set[str]:
    """Everything one file imports (absolute names; ``from a import b`` gives ``a`` and ``a.b``)."""
    package = name if file.stem == "__init__" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            parent = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (parent, node.module or "") if p)
            imported |= {target} | {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call):
            called = getattr(node.func, "id", None) or getattr(node.func, "attr", "")
            if called in {"__import__", "import_module"}:
                imported.add(f"<dynamic import in {name}>")
    return imported


def _product_imports(tree: Path, start: str = "tests.viid_double") -> dict[str, set[str]]:
    """Module -> the product modules it imports, for ``start`` and every ``tests`` module it reaches.

    Absolute and relative imports, at any depth (inside functions, ``TYPE_CHECKING`` blocks), are
    followed; a call to ``__import__`` or ``import_module`` counts as a product import, since a
    dynamic import could reach anything.
    """
    product = set(_contract()["root_packages"])  # type: ignore[call-overload]
    found: dict[str, set[str]] = {}
    todo = [start]
    while todo:
        for name, file in _module_files(tree, todo.pop()).items():
            if name in found:
                continue
            imported = _imports_of(name, file)
            found[name] = {i for i in imported if i.split(".")[0] in product or i.startswith("<dynamic")}
            # "from tests.x import name" names tests.x and tests.x.name; whichever is a module is followed
            todo += [i for i in imported if i.split(".")[0] == "tests" and i not in found]
    return found


def test_the_viid_double_imports_nothing_of_the_product() -> None:
    """No module of the GA/T 1400 double, nor any test module it imports, imports one of our packages.

    Broken on purpose: with ``from foundation.errors import ConfigError`` added to
    ``tests/viid_double/server.py`` this test failed naming that module and import (and the copy
    test below keeps such teeth: a direct, an indirect and a dynamic product import are all caught).
    """
    found = _product_imports(ROOT)
    assert {
        "tests.viid_double",
        "tests.viid_double.server",
        "tests.viid_double.validation",
        "tests.viid_double.upper",
        "tests.viid_double.samples",
        "tests.digest_by_hand",
    } <= set(found)
    assert {module: imports for module, imports in found.items() if imports} == {}


def test_a_product_import_in_the_double_is_caught(tmp_path: Path) -> None:
    """On a copy of the double, a direct, an indirect (through another test module) and a dynamic import are named."""
    tree = tmp_path / "tree"
    shutil.copy(ROOT / "pyproject.toml", tree.parent / "pyproject.toml")
    shutil.copytree(
        ROOT / "tests" / "viid_double",
        tree / "tests" / "viid_double",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "tests" / "digest_by_hand.py", tree / "tests" / "digest_by_hand.py")
    assert {m: i for m, i in _product_imports(tree).items() if i} == {}  # the copy itself is clean
    with (tree / "tests" / "viid_double" / "validation.py").open("a", encoding="utf-8") as f:
        f.write("\nfrom foundation.errors import ConfigError\n")
    with (tree / "tests" / "digest_by_hand.py").open("a", encoding="utf-8") as f:
        f.write("\n\ndef _sneak() -> None:\n    import gateway.push_auth\n")
    with (tree / "tests" / "viid_double" / "samples.py").open("a", encoding="utf-8") as f:
        f.write("\nimportlib.import_module('uplink.protocol')\n")
    found = {m: i for m, i in _product_imports(tree).items() if i}
    assert found == {
        "tests.viid_double.validation": {"foundation.errors", "foundation.errors.ConfigError"},
        "tests.digest_by_hand": {"gateway.push_auth"},
        "tests.viid_double.samples": {"<dynamic import in tests.viid_double.samples>"},
    }
