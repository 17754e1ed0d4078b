"""Running it: JSON logs, metrics, shutdown."""
