"""specplug/zoo: corpus split, tokenizer, deterministic resumable training, export and checked
loading, and the shipped models themselves (checksums, held-out loss recomputed here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

from specplug.zoo import build, corpus, recipes, shipped, tokenizer, train  # noqa: E402

SMALL = recipes.scaled(recipes.TARGET, steps=6, num_hidden_layers=1, hidden_size=64, num_attention_heads=1,
                       num_key_value_heads=1, intermediate_size=128, seq_len=32, batch_size=4, eval_windows=4)


def test_split_depends_on_the_path_only_and_holds_out_about_one_file_in_twenty():
    files = corpus.corpus_files()
    assert len(files) > 300
    assert not [f.relpath for f in files if any(d.startswith("test") for d in f.relpath.split("/")[:-1])]
    held = [f for f in files if f.held_out]
    assert 0.02 < len(held) / len(files) < 0.09
    same_path = corpus.CorpusFile(held[0].relpath, "different text")
    assert same_path.held_out  # the text does not decide
    train_files, held_files = corpus.split(files)
    assert {f.relpath for f in train_files}.isdisjoint({f.relpath for f in held_files})


def test_tokenizer_reserves_special_ids_and_round_trips_any_text():
    texts = ["def f(x):\n    return x + 1\n" * 20, "class A:\n    pass\n" * 20]
    tok = tokenizer.train_tokenizer(texts, 300)
    for i, t in enumerate(tokenizer.SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i
    s = "naïve — λx: x ** 2  # ünïcode\n\ttabs"
    assert tok.decode(tok.encode(s).ids) == s
    stream = tokenizer.encode_files(tok, texts)
    assert stream.dtype == np.int32 and (stream == tokenizer.EOS_ID).sum() == 2 and stream[-1] == tokenizer.EOS_ID


def _stream(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    phrase = rng.integers(4, 200, size=37)
    return np.tile(phrase, n // 37 + 1)[:n].astype(np.int32)


def test_training_is_deterministic_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    s = _stream()
    full, _ = train.train_decoder(SMALL, s, tmp_path / "a.ckpt", progress=False)
    twice, _ = train.train_decoder(SMALL, s, tmp_path / "b.ckpt", progress=False)
    # interrupted: the 4th step dies after the step-3 checkpoint; a new call resumes from it
    real, calls = train.causal_lm_loss, []

    def dies_at_step_4(model, tokens):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(model, tokens)

    monkeypatch.setattr(train, "causal_lm_loss", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train.train_decoder(SMALL, s, tmp_path / "c.ckpt", progress=False, checkpoint_every=3)
    assert torch.load(tmp_path / "c.ckpt", weights_only=False)["step"] == 3
    calls.clear()
    monkeypatch.setattr(train, "causal_lm_loss", lambda m, t: (calls.append(1), real(m, t))[1])
    resumed, _ = train.train_decoder(SMALL, s, tmp_path / "c.ckpt", progress=False)
    assert len(calls) == SMALL.steps - 3  # it did resume, not start over
    for (n, p), (_, q), (_, r) in zip(full.state_dict().items(), twice.state_dict().items(),
                                      resumed.state_dict().items()):
        assert torch.equal(p, q), n
        assert torch.equal(p, r), n
    # a checkpoint of another recipe is not resumed from
    other = recipes.scaled(SMALL, lr=1e-3)
    fresh, _ = train.train_decoder(other, s, tmp_path / "a.ckpt", progress=False)
    assert not torch.equal(fresh.model.embed_tokens.weight, full.model.embed_tokens.weight)


def test_training_learns_the_stream(tmp_path):
    torch.set_num_threads(1)
    r = recipes.scaled(SMALL, steps=60, lr=3e-3)
    s = _stream()
    untrained = train.held_out_loss(train.new_decoder(r), s, r)
    model, _ = train.train_decoder(r, s, tmp_path / "x.ckpt", progress=False)
    assert untrained > math.log(recipes.VOCAB_SIZE) - 0.5
    assert train.held_out_loss(model, s, r) < 0.5 * untrained


def test_export_widens_fp16_weights_exactly_and_the_loader_names_a_corrupt_file(tmp_path):
    tok = tokenizer.train_tokenizer(["x = 1\n" * 50], 300)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    tokenizer.save_for_transformers(tok, tok_dir)
    model = train.new_decoder(SMALL)
    manifest = shipped.export_decoder(model, tok_dir, tmp_path / "m", {"note": 1})
    assert manifest["note"] == 1 and "model.safetensors" in manifest["files"]
    assert shipped.check_folder(tmp_path / "m")["files"] == manifest["files"]
    loaded = shipped.load_for_eval(tmp_path / "m")
    for (n, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert q.dtype == torch.float32 and torch.equal(p.half().float(), q), n
    blob = bytearray((tmp_path / "m" / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(shipped.ZooError, match="model.safetensors: sha256"):
        shipped.check_folder(tmp_path / "m")
    with pytest.raises(shipped.ZooError, match="unknown zoo model 'nope'"):
        shipped.zoo_model("nope")


@pytest.mark.parametrize("name", shipped.NAMES)
def test_shipped_model_checks_out_and_its_held_out_loss_reproduces(name):
    folder = shipped.zoo_model(name)
    m = shipped.read_manifest(folder)
    # far below uniform (a block drafter predicts up to a block ahead, so its bar is lower)
    assert m["held_out_perplexity"] < m["uniform_perplexity"] / (100 if name in recipes.DECODERS else 10)
    files = corpus.corpus_files()
    if corpus.corpus_digest(files) != m["corpus_digest"]:
        pytest.skip("this Python's standard library differs from the corpus the models were trained on "
                    f"(Python {m['python']})")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    held = [f.text for f in corpus.split(files)[1]]
    stream = tokenizer.encode_files(tok.backend_tokenizer, held)
    assert len(stream) == m["held_out_tokens"]
    torch.set_num_threads(2)
    if name in recipes.DECODERS:
        r, model, loss_fn = recipes.DecoderRecipe(**m["recipe"]), shipped.load_for_eval(folder), None
    else:
        from specplug.zoo import diffusion

        r, model, loss_fn = recipes.DiffusionRecipe(**m["recipe"]), shipped.load_drafter(folder), diffusion.diffusion_loss
    loss = train.held_out_loss(model, stream, r, loss_fn)
    assert loss == pytest.approx(m["held_out_loss"], rel=1e-3)


def test_compare_with_shipped_reports_identity_or_the_loss_difference():
    m = shipped.read_manifest(shipped.SHIPPED_DIR / "draft")
    assert "identical" in build.compare_with_shipped("draft", m)
    other = dict(m, files={"model.safetensors": "0"}, held_out_loss=m["held_out_loss"] * 1.01, threads=1)
    assert "within the 3% tolerance" in build.compare_with_shipped("draft", other)
    far = dict(other, held_out_loss=m["held_out_loss"] * 1.2)
    assert "OUTSIDE" in build.compare_with_shipped("draft", far)
