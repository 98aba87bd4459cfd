"""Models as artifacts: ``bundle`` (the only save/load code), ``registry`` (MLflow registry access),
``cache`` (registered versions downloaded once), ``tracking`` (the MLflow client and run logging)."""
