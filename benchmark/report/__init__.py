"""Reports drawn from results.csv alone: leaderboards and plots."""
