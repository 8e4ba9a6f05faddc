"""The one project config (``qtos.yaml``), validated by pydantic: one module per group of sections (``data``,
``research``, ``backtest``, ``agents``, ``execution``), the whole config with every check that involves more than
one key in ``project``, loading in ``loading``. Everything is importable from here.

Loading fails at definitions-load time with one line per problem that names the key path and the bad
value, e.g. ``agents[0].risk.max_position_pct: 1.7 is not <= 1``.
"""

from qt_resources.config.agents import (CONTEXT_BLOCKS, REGIME_MULTIPLIER, AgentLLMSection, AgentSection,
                                        AllocationSection, RegimeLabel, RegimeSection)
from qt_resources.config.backtest import (STOP_SWEEP, BacktestSection, CostsSection, RiskLimits, SelectionSection,
                                          SizingSection, StopsSection, StrategySection, WalkForwardSection)
from qt_resources.config.base import (DEFAULT_CONFIG_PATH, NAME_PATTERN, NOT_FINGERPRINTED, REPO_ROOT,
                                      SYMBOL_PATTERN, ConfigError, FamilyName, RuleName, SizingName)
from qt_resources.config.data import (DataSection, FilingsSection, Listing, LLMSection, NewsSection, ProjectSection,
                                      Symbol, UniverseSection)
from qt_resources.config.execution import (KILL_SWITCH_ENV, AlpacaSection, BrokerSection, PretradeSection,
                                           StorageSection)
from qt_resources.config.loading import DuplicateKeyError, load_config, parse_config
from qt_resources.config.project import ProjectConfig
from qt_resources.config.research import (CVSection, FeaturesSection, LabelSection, ModelSection, PromotionSection,
                                          ResearchSection, RetrainSection, SplitSection, TuningSection)

__all__ = [
    "CONTEXT_BLOCKS", "DEFAULT_CONFIG_PATH", "KILL_SWITCH_ENV", "NAME_PATTERN", "NOT_FINGERPRINTED", "REGIME_MULTIPLIER",
    "REPO_ROOT", "STOP_SWEEP", "SYMBOL_PATTERN", "AgentLLMSection", "AgentSection", "AllocationSection",
    "AlpacaSection", "BacktestSection", "BrokerSection", "CVSection", "ConfigError", "CostsSection", "DataSection",
    "DuplicateKeyError", "FamilyName", "FeaturesSection", "FilingsSection", "LLMSection", "LabelSection", "Listing",
    "ModelSection", "NewsSection", "PretradeSection", "ProjectConfig", "ProjectSection", "PromotionSection",
    "RegimeLabel", "RegimeSection", "ResearchSection", "RetrainSection", "RiskLimits", "RuleName", "SelectionSection",
    "SizingName", "SizingSection", "SplitSection", "StopsSection", "StorageSection", "StrategySection", "Symbol",
    "TuningSection", "UniverseSection", "WalkForwardSection", "load_config", "parse_config",
]
