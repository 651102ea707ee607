"""The data stage: sources, Spark ingest / clean / dedup jobs and x-ray statistics."""
