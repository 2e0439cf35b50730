"""Secrets handed over by systemd as credentials.

``LoadCredential=<name>:<path>`` puts a private, read-only copy in ``$CREDENTIALS_DIRECTORY/<name>``,
readable by the unit's (dynamic) user alone.

One reading of that directory for every secret a daemon takes (TLS keys, the compound's device
secrets), so each failure names the same fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field

from foundation.errors import ConfigError

CredentialName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")]
"""The id of a systemd credential: a file name in ``$CREDENTIALS_DIRECTORY``."""

CREDENTIAL_PLACEHOLDER = b"not-provided"
"""What the shipped units pass (``SetCredential=``) when ``LoadCredential=`` finds no file.

systemd then starts the daemon anyway (a gateway in direct mode needs no client key), and a config
that names the credential fails with the fix instead of a unit that will not start.
"""


def credentials_directory() -> Path | None:
    """``$CREDENTIALS_DIRECTORY`` when the daemon runs under a unit that passes credentials."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(directory) if directory else None


def credential_path(name: str, what: str, default_source: str) -> Path:
    """The file of credential ``name``, which holds ``what``; ``ConfigError`` with the fix otherwise.

    ``default_source`` is where the shipped unit reads it from (named in the fix). The message says
    what is wrong and what to do, without the config file and field, which the caller adds.
    """
    directory = credentials_directory()
    if directory is None:
        raise ConfigError(
            f"{what} is the systemd credential {name!r}, but $CREDENTIALS_DIRECTORY is not set:"
            f" run the daemon under its unit (LoadCredential={name}:<path>), or name the file instead"
        )
    path = directory / name
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"credential {path} does not exist: add LoadCredential={name}:<path> to the unit"
            " (the shipped units in systemd/ pass it)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"credential {path} is unreadable ({exc.strerror})") from None
    if content.strip() == CREDENTIAL_PLACEHOLDER:
        raise ConfigError(
            f"credential {name!r} is the unit's placeholder: its LoadCredential={name}:<path> found no file;"
            f" put {what} at that path (the shipped unit: {default_source}), mode 0600 owned by root,"
            " and restart"
        )
    return path
