"""Execution sensors.

``kill_switch_on_drawdown`` (every 60 s, RUNNING by default: it launches no run, it only writes a file)
    Reads the latest ``guarded_targets/<agent>`` materialisation of every agent; when one reports ``halted``
    (the guardian's drawdown kill switch), it creates the kill switch file (``broker.kill_switch_file``) with the
    agent and the reason, so no agent places orders until a person removes it (see ``qt_resources/gates.py``).
    Cursor: the agents already reported, so a halt is written once.
"""

from __future__ import annotations

import json

import dagster as dg

from qt_resources.config import ProjectConfig
from qt_resources.gates import kill_switch, set_kill_switch


def build_execution_sensors(cfg: ProjectConfig) -> list[dg.SensorDefinition]:
    agents = [a.name for a in cfg.agents]

    @dg.sensor(name="kill_switch_on_drawdown", minimum_interval_seconds=60,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Sets the kill switch file when an agent's guardian halts it on its drawdown limit.")
    def kill_switch_on_drawdown(context: dg.SensorEvaluationContext):
        reported = set(json.loads(context.cursor)) if context.cursor else set()
        halted = {}
        for a in agents:
            ev = context.instance.get_latest_materialization_event(dg.AssetKey(["guarded_targets", a]))
            md = ev.asset_materialization.metadata if ev and ev.asset_materialization else {}
            if md.get("halted") is not None and md["halted"].value:
                halted[a] = md.get("drawdown").value if md.get("drawdown") is not None else None
        new = sorted(set(halted) - reported)
        if not new:
            return dg.SkipReason(f"no agent newly halted (halted: {sorted(halted) or 'none'}; "
                                 f"kill switch {'on' if kill_switch(cfg) else 'off'})")
        if kill_switch(cfg) is None:
            path = set_kill_switch(cfg, "; ".join(f"agent {a} halted by its drawdown limit (drawdown {halted[a]})"
                                                  for a in new))
            context.log.warning(f"kill switch set: {path}")
        context.update_cursor(json.dumps(sorted(reported | set(halted))))
        return dg.SkipReason(f"kill switch set for {new}: {kill_switch(cfg)}")

    return [kill_switch_on_drawdown]
