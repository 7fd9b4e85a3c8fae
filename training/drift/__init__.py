"""Interest-drift detection: spliced cases, the drift head's training, calibration, evaluation.

Entry point: :func:`training.drift.pipeline.train_and_evaluate_drift`.
"""
