"""DriftRec training: datasets, model training, evaluation and MLflow registration."""
