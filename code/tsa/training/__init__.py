"""Training: the legacy optimisation recipe, metrics and stopping, as a Lightning system."""
