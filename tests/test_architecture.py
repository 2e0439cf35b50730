"""The layer contract (pyproject ``[tool.importlinter]``) holds, covers every package, and has teeth.

The contract itself is checked by import-linter on the working tree; its teeth by breaking it on a
temporary copy (a foundation module importing the compound daemon, the district importing the
gateway) and seeing ``lint-imports`` fail there and name the import. The MQTT rule (only
``foundation.mqtt`` imports aiomqtt/paho) is ruff's banned-api rule, checked the same way.
"""

from __future__ import annotations

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
