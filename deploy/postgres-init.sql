-- Second database on the stack's PostgreSQL: MLflow's backend store (Dagster uses POSTGRES_DB = dagster).
CREATE DATABASE mlflow OWNER qtos;
