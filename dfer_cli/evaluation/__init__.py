"""Scoring checkpoints on datasets: UAR/WAR on a split or over folds (`run`), which checkpoint
of a run is scored (`selection`) and the figures (`plots`)."""
