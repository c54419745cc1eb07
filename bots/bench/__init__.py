"""`bots bench`: a reproducible workload against the real engine and its baselines."""
