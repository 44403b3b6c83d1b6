-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d/), as POSTGRES_USER.
-- POSTGRES_DB (prefect) holds the Prefect server's state; this adds the MLflow backend store.
CREATE DATABASE mlflow;
