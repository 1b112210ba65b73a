"""Evaluation: feature spaces, metrics, evaluator and downstream classifiers, scoring outside samples."""
