"""Shared parts of the config models: the repo root, name patterns, the registry-checked names, the error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from qt_resources.plugins import MODEL_FAMILIES, RULES, SIZING_KINDS

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "qtos.yaml"
SYMBOL_PATTERN = r"^[A-Z][A-Z0-9.\-]{0,9}$"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
# settings that cannot change any result (the model is the same for any thread count): not in fingerprint()
NOT_FINGERPRINTED = {"research": {"model": {"n_jobs"}}}


# names checked against the registries (qt_resources.plugins): the error lists the registered ones
RuleName = Annotated[str, AfterValidator(RULES.validator)]
SizingName = Annotated[str, AfterValidator(SIZING_KINDS.validator)]
FamilyName = Annotated[str, AfterValidator(MODEL_FAMILIES.validator)]


class ConfigError(ValueError):
    """An invalid project config; the message lists every problem with its key path."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"Invalid project config {source}:\n" + "\n".join(f"  - {p}" for p in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
