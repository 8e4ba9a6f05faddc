"""Sensors: price gaps (here); new data, drift, MLflow champion changes, kill switch and failures arrive
with the research and execution issues."""

import dagster as dg

from qt_sensors.market_data import build_gap_sensor


def build_sensors(partitions: dg.PartitionsDefinition) -> list[dg.SensorDefinition]:
    return [build_gap_sensor(partitions)]
