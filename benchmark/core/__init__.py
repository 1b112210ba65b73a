"""Foundations every stage uses: configuration, presets, registries, errors, devices, process groups."""
