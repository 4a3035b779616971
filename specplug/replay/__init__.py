"""Trace replay: tau (tokens per target forward) of drafters on recorded greedy traces, without
running the target model. See docs/replay.md."""
