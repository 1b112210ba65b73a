"""The harness: grid cells, the stages of one cell, launchers, the results table."""
