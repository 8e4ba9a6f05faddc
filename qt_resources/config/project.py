"""The whole project config, and every check that involves more than one key (one place:
:meth:`ProjectConfig.cross_check`)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import Field

from qt_resources.config.agents import AgentSection, AllocationSection, RegimeSection
from qt_resources.config.backtest import BacktestSection, RiskLimits, STOP_SWEEP, StrategySection
from qt_resources.config.base import NOT_FINGERPRINTED, REPO_ROOT, _Model
from qt_resources.config.data import DataSection, FilingsSection, LLMSection, NewsSection, ProjectSection, UniverseSection
from qt_resources.config.execution import BrokerSection, KILL_SWITCH_ENV, StorageSection
from qt_resources.config.research import FeaturesSection, LabelSection, ResearchSection
from qt_resources.plugins import MODEL_FAMILIES, RULES, param_problems, typed


class ProjectConfig(_Model):
    project: ProjectSection = ProjectSection()
    universe: UniverseSection
    data: DataSection
    news: NewsSection = NewsSection()
    filings: FilingsSection = FilingsSection()
    llm: LLMSection = LLMSection()
    features: FeaturesSection
    label: LabelSection = LabelSection()
    research: ResearchSection
    backtest: BacktestSection = BacktestSection()
    agents: list[AgentSection] = Field(min_length=1)
    risk: RiskLimits = RiskLimits()
    regime: RegimeSection = RegimeSection()
    allocation: AllocationSection = AllocationSection()
    broker: BrokerSection = BrokerSection()
    storage: StorageSection = StorageSection()
    plugins: list[str] = Field(
        default_factory=list, exclude=True, description=(
            "the project's own rules, sizing kinds and model families: .py files, or folders of them, relative "
            "to this file, loaded before the rest is validated (docs/extending.md); their contents are part of "
            "the config fingerprint"))

    # where the file was loaded from; storage paths resolve against it
    base_dir: Path = Field(default=REPO_ROOT, exclude=True)

    # --- derived ---------------------------------------------------------------------------
    @property
    def label_span(self) -> int:
        """Sessions from a label's session to the session it becomes known (h, or h+1 for next-open entry)."""
        return self.label.horizon + (1 if self.label.price == "open" else 0)

    @property
    def embargo(self) -> int:
        e = self.research.split.embargo
        return self.label_span if e is None else e

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def warehouse_dir(self) -> Path:
        return self.path(self.storage.warehouse_dir)

    @property
    def mlflow_dir(self) -> Path:
        return self.path(self.storage.mlflow_dir)

    @property
    def reports_dir(self) -> Path:
        return self.path(self.storage.reports_dir)

    @property
    def kill_switch_path(self) -> Path:
        """``$QTOS_KILL_SWITCH_FILE`` when set (a deployment puts it on a volume every process shares), else
        ``broker.kill_switch_file`` relative to the config."""
        return self.path(os.environ.get(KILL_SWITCH_ENV) or self.broker.kill_switch_file)

    def risk_for(self, who: AgentSection | StrategySection) -> RiskLimits:
        """The project's risk limits with the keys an agent or strategy sets itself laid over them."""
        if who.risk is None:
            return self.risk
        return self.risk.model_copy(update={k: getattr(who.risk, k) for k in who.risk.model_fields_set})

    def plugin_files(self) -> dict[str, str]:
        """The plugin files this config loads -> sha256 of their contents."""
        out = {}
        for raw in self.plugins:
            p = (self.base_dir / raw).resolve()
            for f in sorted(p.glob("*.py")) if p.is_dir() else [p]:
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
        return out

    def resolved(self) -> dict:
        d = self.model_dump(mode="json")
        return {**d, "plugins": self.plugins} if self.plugins else d

    def fingerprint(self) -> str:
        """Hash of what decides results; settings that cannot change them (training threads) are left out, the
        plugin files' contents are in."""
        d = self.model_dump(mode="json", exclude=NOT_FINGERPRINTED)
        if self.plugins:
            d["plugins"] = sorted(self.plugin_files().values())
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def cross_check(self, known_features: list[str] | None = None) -> list[str]:
        """Checks that involve more than one key; returns problems as 'path: message'."""
        problems: list[str] = []
        d = self.data
        if d.start >= d.end:
            problems.append(f"data.start: {d.start} is not before data.end ({d.end})")
        te = self.research.split.train_end
        if not (d.start < te < d.end):
            problems.append(f"research.split.train_end: {te} is not inside data.start..data.end ({d.start}..{d.end})")
        ve = self.research.split.valid_end
        if ve is not None and self.research.split.test_sessions is not None:
            problems.append("research.split.valid_end: not supported with test_sessions (rolling split)")
        if ve is not None and not (te < ve < d.end):
            problems.append(f"research.split.valid_end: {ve} is not between train_end ({te}) and data.end ({d.end})")
        if d.provider == "csv" and not d.csv_path:
            problems.append("data.csv_path: required when data.provider is 'csv'")
        for section, provider, prefix, block in (("news", self.news.provider, "news_", "news"),
                                                 ("filings", self.filings.provider, "insider_", "insider")):
            if provider != "none":
                continue
            for i, f in enumerate(self.features.set):
                if f.startswith(prefix):
                    problems.append(f"features.set[{i}]: {f!r} needs {section} data, but {section}.provider is 'none'")
            for i, a in enumerate(self.agents):
                if block in (a.context or []):
                    problems.append(f"agents[{i}].context: {block!r} needs {section} data, but {section}.provider "
                                    "is 'none'")
        if self.news.scorer == "llm" and self.llm.kind == "none":
            problems.append("news.scorer: 'llm' needs an llm section with kind: openai")
        e = self.research.split.embargo
        if e is not None and e < self.label_span:
            problems.append(f"research.split.embargo: {e} is less than the label's span ({self.label_span} sessions)")
        if self.label.down >= self.label.up:
            problems.append(f"label.down: {self.label.down} is not below label.up ({self.label.up})")
        if known_features is not None:
            for i, f in enumerate(self.features.set):
                if f not in known_features:
                    problems.append(
                        f"features.set[{i}]: {f!r} is not a feature of dbt_features "
                        f"(known: {', '.join(sorted(known_features))})"
                    )
        problems += self._check_model()
        problems += self._check_strategies()
        checks = [("risk", self.risk)] + [(f"agents[{i}].risk", self.risk_for(a)) for i, a in enumerate(self.agents)
                                          if a.risk is not None]
        for at, r in checks:
            if r.kelly_window < r.kelly_min_trades:
                problems.append(f"{at}.kelly_window: {r.kelly_window} is below kelly_min_trades ({r.kelly_min_trades}): "
                                "the Kelly ceiling would never apply")
        al = self.allocation
        if al.discipline_window < al.discipline_min_trades:
            problems.append(f"allocation.discipline_window: {al.discipline_window} is below discipline_min_trades "
                            f"({al.discipline_min_trades}): the score would never be rated")
        if self.regime.breadth_off >= self.regime.breadth_on:
            problems.append(f"regime.breadth_off: {self.regime.breadth_off} is not below regime.breadth_on "
                            f"({self.regime.breadth_on})")
        problems += self._check_agents(known_features)
        return problems

    def _check_rule(self, at: str, rule: str, params: dict, sweep: dict, longshort: bool) -> list[str]:
        """Rule params (and sweep values) against the registered rule's; its cross-parameter rule; its positions
        against the universe."""
        problems: list[str] = []
        spec = RULES.get(rule)
        owner = f"rule {rule!r}"
        problems += param_problems(f"{at}.params", owner, spec.params, params)
        for p, vals in sweep.items():
            if p in STOP_SWEEP:
                lo, hi = STOP_SWEEP[p]
                if not vals:
                    problems.append(f"{at}.sweep.{p}: empty list")
                problems += [f"{at}.sweep.{p}[{j}]: {v!r} is not in ({lo:g}, {hi:g}{']' if p == 'tp' else ')'}"
                             for j, v in enumerate(vals) if not (lo < v < hi or (p == "tp" and v == hi))]
            elif p not in spec.params:
                problems.append(f"{at}.sweep.{p}: unknown parameter of {owner} (known: {', '.join(spec.params)})")
            else:
                if not vals:
                    problems.append(f"{at}.sweep.{p}: empty list")
                problems += [f"{at}.sweep.{p}[{j}]: {why}" for j, v in enumerate(vals)
                             if (why := spec.params[p].problem(v)) is not None]
        if problems:
            return problems
        p = typed(spec.params, params)
        if spec.check is not None and (bad := spec.check(p)):
            problems.append(f"{at}.params.{bad}")
        n_sym = len(self.universe.symbols)
        if (n := spec.n_slots(p, longshort)) is not None and n > n_sym:
            if isinstance(spec.slots, str):
                problems.append(f"{at}.params.{spec.slots}: {p[spec.slots]} picks per side do not fit the {n_sym} "
                                f"symbols")
            else:
                problems.append(f"{at}.params: rule {rule!r} holds {n} positions with these params, more than the "
                                f"{n_sym} symbols")
        return problems

    def _check_band(self, at: str, st: StrategySection) -> list[str]:
        """A rebalance_band wider than every weight the sizing can target would swallow every order: refused with
        both values (built-in sizing kinds; the configured params, not each sweep combination)."""
        sz, band = st.sizing, st.rebalance_band
        if band == 0 or sz.kind not in ("equal", "target_percent", "vol_target", "fixed_fraction"):
            return []
        ls = st.direction == "longshort"
        if sz.kind == "equal":
            if st.kind == "model":
                slots = st.selection.top_k * (2 if ls else 1)
            else:
                spec = RULES.get(st.rule)
                slots = (len(self.universe.symbols) if spec.slots is None else
                         spec.n_slots(typed(spec.params, st.params), ls))
            w, what = 1.0 / slots, f"1/{slots} per position with sizing 'equal'"
        else:
            key = {"target_percent": "weight", "vol_target": "max_weight", "fixed_fraction": "fraction"}[sz.kind]
            w, what = getattr(sz, key), f"sizing.{key} of sizing {sz.kind!r}"
        if band <= w:
            return []
        return [f"{at}.rebalance_band: {band:g} is wider than every weight the sizing targets ({w:.4g}: {what}): "
                f"no order would ever be placed; lower the band below {w:.4g} or hold fewer positions"]

    def _check_agents(self, known_features: list[str] | None) -> list[str]:
        problems: list[str] = []
        seen: set[str] = set()
        n_sym = len(self.universe.symbols)
        for i, a in enumerate(self.agents):
            at = f"agents[{i}]"
            if a.name in seen:
                problems.append(f"{at}.name: {a.name!r} is used by another agent")
            seen.add(a.name)
            problems += a.sizing.problems(f"{at}.sizing")
            if a.kind == "rule":
                if a.rule is None:
                    problems.append(f"{at}.rule: required for kind 'rule' (one of {RULES.names()})")
                else:
                    problems += self._check_rule(at, a.rule, a.params, {}, False)
            elif a.rule is not None or a.params:
                problems.append(f"{at}: only rule agents take rule and params")
            if a.kind in ("model", "hybrid"):
                if a.model is None:
                    problems.append(f"{at}.model: required for kind {a.kind!r}")
                elif a.model != self.research.model.name:
                    problems.append(f"{at}.model: {a.model!r} is not a model this project trains "
                                    f"(research.model.name is {self.research.model.name!r})")
                if a.selection.top_k > n_sym:
                    problems.append(f"{at}.selection.top_k: {a.selection.top_k} is more than the {n_sym} symbols "
                                    f"of the universe")
            elif a.model is not None:
                problems.append(f"{at}.model: only model and hybrid agents take a model")
            if a.kind in ("llm", "hybrid"):
                if self.llm.kind == "none":
                    problems.append(f"{at}.kind: {a.kind!r} needs an llm section with kind: openai")
                if a.prompt is None:
                    problems.append(f"{at}.prompt: required for kind {a.kind!r} (a system prompt file)")
                elif not self.path(a.prompt).is_file():
                    problems.append(f"{at}.prompt: {a.prompt!r} is not a file ({self.path(a.prompt)})")
                if "model_signals" in a.context and a.kind == "llm":
                    problems.append(f"{at}.context: 'model_signals' needs a model (kind hybrid)")
                if "features" in a.context and not a.features:
                    problems.append(f"{at}.features: the features block needs at least one feature")
            if known_features is not None:
                for j, f in enumerate(a.features):
                    if f not in known_features:
                        problems.append(f"{at}.features[{j}]: {f!r} is not a feature of dbt_features "
                                        f"(known: {', '.join(sorted(known_features))})")
        return problems

    def _check_model(self) -> list[str]:
        """The model's params against its family's registry entry; tuning needs the family's search space."""
        m = self.research.model
        spec = MODEL_FAMILIES.get(m.family)
        problems = param_problems("research.model.params", f"model family {m.family!r}", spec.params, m.params)
        n = self.research.tuning.n_trials
        if n and spec.search is None:
            problems.append(f"research.tuning.n_trials: {n} trials, but model family {m.family!r} has no search "
                            f"space (set 0)")
        return problems

    def _check_strategies(self) -> list[str]:
        problems: list[str] = []
        names: set[str] = set()
        n_sym = len(self.universe.symbols)
        for i, st in enumerate(self.backtest.strategies):
            at = f"backtest.strategies[{i}]"
            if st.name in names:
                problems.append(f"{at}.name: {st.name!r} is used by another strategy")
            names.add(st.name)
            problems += st.sizing.problems(f"{at}.sizing")
            if st.kind == "model":
                if st.rule is not None or st.params or st.sweep:
                    problems.append(f"{at}: a model strategy takes no rule, params or sweep")
                if st.entry != "state":
                    problems.append(f"{at}.entry: {st.entry!r} is for rule strategies; a model strategy holds its "
                                    f"top-k picks (entry: state)")
                if st.model is not None and st.model != self.research.model.name:
                    problems.append(f"{at}.model: {st.model!r} is not a model this project trains "
                                    f"(research.model.name is {self.research.model.name!r})")
                if st.selection.top_k * (2 if st.direction == "longshort" else 1) > n_sym:
                    problems.append(f"{at}.selection.top_k: {st.selection.top_k} picks per side do not fit the "
                                    f"{n_sym} symbols of the universe")
                else:
                    problems += self._check_band(at, st)
                continue
            if st.rule is None:
                problems.append(f"{at}.rule: required for kind 'rule' (one of {RULES.names()})")
                continue
            rule_problems = self._check_rule(at, st.rule, st.params, st.sweep, st.direction == "longshort")
            problems += rule_problems
            if not rule_problems:
                problems += self._check_band(at, st)
        wf = self.backtest.walk_forward
        if wf is not None:
            st = next((s for s in self.backtest.strategies if s.name == wf.strategy), None)
            if st is None or st.kind != "model":
                problems.append(f"backtest.walk_forward.strategy: {wf.strategy!r} is not a model strategy of "
                                f"backtest.strategies")
        return problems


# --- errors ---------------------------------------------------------------------------------
