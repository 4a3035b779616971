"""Local model folders: tiny test models and SmolLM2 built offline."""
