"""Reading a TOML file into a frozen pydantic model, with errors that name the file, field and fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from foundation.errors import ConfigError

Model = TypeVar("Model", bound=BaseModel)


def load_toml_model(path: Path, model: type[Model], what: str) -> Model:
    """Read and validate; ``ConfigError`` lists every problem at once, each with its fix."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass {what} with --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_errors(path, exc)) from None


def format_validation_errors(path: Path, exc: ValidationError) -> str:
    """One line per error: file, dotted field path, what is wrong and how to fix it."""
    lines = [f"{path}: {exc.error_count()} configuration error(s)"]
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        kind = error["type"]
        message = error["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            fix = "remove it (check the spelling against docs/configuration.md)"
        elif kind == "missing":
            fix = "add it"
        elif kind.startswith("string_pattern") and (
            "_id" in where or where.endswith(".id") or where.endswith("id")
        ):
            fix = "use the 20-digit GB/T 28181 id (8 centre + 2 industry + 3 type + 1 network + 6 serial digits)"
        else:
            fix = "correct the value"
        lines.append(f"  {where}: {message} -> fix: {fix}")
    return "\n".join(lines)
