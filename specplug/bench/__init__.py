"""Benchmarks on real engines: every configuration runs in its own process, side by side on the
same prompts, and is compared with no speculation from the same run."""
