"""Sensors: price gaps; research (champion changed, new data, feature drift); execution (kill switch on an
agent's drawdown halt)."""

import dagster as dg

from qt_resources.config import ProjectConfig
from qt_sensors.execution import build_execution_sensors
from qt_sensors.market_data import build_gap_sensor
from qt_sensors.research import build_research_sensors


def build_sensors(cfg: ProjectConfig, partitions: dg.PartitionsDefinition, *, retrain_job: str,
                  decisions_job: str) -> list[dg.SensorDefinition]:
    return [build_gap_sensor(partitions),
            *build_research_sensors(cfg, retrain_job=retrain_job, decisions_job=decisions_job),
            *build_execution_sensors(cfg)]
