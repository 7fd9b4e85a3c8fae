"""DriftRec: interest profiles, interest-drift detection and drift-aware recommendations."""
