"""Reading a secret from the environment variable a config field names.

AppConfig holds only the *name* of each secret's variable (``api.api_keys_env``,
``storage.job_store_password_env``, ``webhooks.secret_env``), so the secret itself never
lands in serveConfigV2. A variable that is named but missing is a deployment mistake
(a Kubernetes Secret not mounted, a typo): it stops start-up instead of falling back to
no password or open access.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class MissingSecretError(ValueError):
    """The config names an environment variable that is unset or empty."""


def secret_from_env(env_name: str, setting: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of ``env_name``; ``setting`` is the config field that named it (for the message)."""
    environ = os.environ if environ is None else environ
    value = environ.get(env_name, "")
    if not value.strip():
        state = "empty" if env_name in environ else "not set"
        raise MissingSecretError(
            f"{setting} names the environment variable {env_name}, but {env_name} is {state} in this process; "
            f"set it (e.g. from a Kubernetes Secret) or unset {setting}"
        )
    return value
