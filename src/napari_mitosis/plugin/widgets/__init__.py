"""Dock widgets (Qt). Thin: they read parameters, start workers and add layers."""
