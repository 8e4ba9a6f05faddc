"""Optional integrations are pyproject extras, not part of the default install (the demo and the UIs):
``live`` (alpaca-py, yfinance, openai) and ``production`` (dagster-postgres, dagster-celery). A project config that
selects one whose package is missing is refused when it loads, naming the setting and the extra to install."""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qt_resources.config import ProjectConfig

# module -> (distribution, extra)
EXTRAS = {"alpaca": ("alpaca-py", "live"), "yfinance": ("yfinance", "live"), "openai": ("openai", "live"),
          "dagster_celery": ("dagster-celery", "production"), "dagster_postgres": ("dagster-postgres", "production")}


def missing_extra(module: str, what: str, installed=find_spec) -> str | None:
    """None when ``module`` can be imported, else ``what`` (a setting or a job) and the extra to install."""
    if installed(module) is not None:
        return None
    dist, extra = EXTRAS[module]
    return (f"{what} needs {dist}, which is in the '{extra}' extra, not in the default install: "
            f"make install EXTRAS={extra}  (or: pip install -c requirements.lock -e '.[{extra}]')")


def selected_integrations(cfg: ProjectConfig) -> list[tuple[str, str]]:
    """(module, setting) for every optional integration the config selects."""
    needs = []
    if cfg.broker.kind == "alpaca":
        needs.append(("alpaca", "broker.kind: 'alpaca'"))
    if cfg.data.provider in ("alpaca", "yfinance"):
        needs.append(("alpaca" if cfg.data.provider == "alpaca" else "yfinance", f"data.provider: {cfg.data.provider!r}"))
    if cfg.news.provider == "alpaca":
        needs.append(("alpaca", "news.provider: 'alpaca'"))
    if cfg.llm.kind == "openai":
        needs.append(("openai", "llm.kind: 'openai'"))
    return needs


def missing_extras(cfg: ProjectConfig, installed=find_spec) -> list[str]:
    """One problem per selected integration whose package is not installed (the config's problem list)."""
    return [m for m in (missing_extra(mod, what, installed) for mod, what in selected_integrations(cfg)) if m]
