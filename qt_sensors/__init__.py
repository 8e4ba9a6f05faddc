"""Sensors (new data, gaps, drift, MLflow champion changes, kill switch, failures) arrive with the
data, research and execution issues; ``qt_jobs.definitions`` collects ``SENSORS`` from here."""

SENSORS: list = []
