"""Evaluation: metrics, generation scores, bias reports and diagnostics of a run's curves."""
