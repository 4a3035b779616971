"""What `specplug zoo build` trains: architectures and training settings, one place.

Sized for the 2-core CPU this project is built on (the whole build well under three hours):
the target is deep (8 layers) but narrow, so layer skipping has layers to skip; head_dim 64
because vLLM's CPU attention accepts only some head sizes. Embeddings are tied (half the
parameters of a model this small would otherwise sit in two vocab matrices).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

VOCAB_SIZE = 4096


@dataclass(frozen=True, kw_only=True)
class TrainingRecipe:
    """What the shared training loop (train.train_model) reads; each model adds its architecture."""

    name: str
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1000
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.1
    seed: int = 0
    eval_windows: int = 96  # held-out windows of seq_len tokens for the printed loss

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DecoderRecipe(TrainingRecipe):
    num_hidden_layers: int
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 768

    def llama_config(self) -> dict:
        return dict(vocab_size=VOCAB_SIZE, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                    num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                    num_key_value_heads=self.num_key_value_heads, max_position_embeddings=2048,
                    tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=2, rope_theta=10000.0)


@dataclass(frozen=True, kw_only=True)
class DiffusionRecipe(TrainingRecipe):
    """The block-diffusion drafter (specplug/zoo/diffusion.py)."""

    hidden_size: int = 256
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 768
    block_size: int = 8

    def diffusion_config(self):
        from specplug.zoo.diffusion import DiffusionConfig

        return DiffusionConfig(vocab_size=VOCAB_SIZE, hidden_size=self.hidden_size, num_layers=self.num_layers,
                               num_heads=self.num_heads, intermediate_size=self.intermediate_size,
                               block_size=self.block_size)


TARGET = DecoderRecipe(name="target", num_hidden_layers=8, steps=1500, seed=0)
DRAFT = DecoderRecipe(name="draft", num_hidden_layers=2, steps=800, seed=1)
DECODERS = {r.name: r for r in (TARGET, DRAFT)}
DLLM = DiffusionRecipe(name="dllm", steps=400, seed=2)
ALL = {**DECODERS, DLLM.name: DLLM}


def scaled(recipe, steps: int | None = None, **overrides):
    """A copy with fewer steps (tests, quick trials) or other fields changed."""
    fields = recipe.as_dict()
    fields.update(overrides)
    if steps is not None:
        fields["steps"] = steps
        fields["warmup"] = min(fields["warmup"], max(1, steps // 10))
    return type(recipe)(**fields)
