"""Drafters distilled from SmolLM2-135M-Instruct (issue 11): local prompts, the target's greedy
answers to them, a draft decoder trained on those answers, and the folders rebuilt from the
shipped layers plus the target's own embedding (docs/models.md, "SmolLM2 drafters")."""
