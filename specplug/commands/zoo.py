"""`specplug zoo build|verify|path`: the reference models trained here (specplug/zoo)."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="reference models trained offline on the Python standard library")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    b = zsub.add_parser("build", help="train the tokenizer and decoders (resumable; ~1 h on 2 cores)")
    b.add_argument("--out", type=Path, default=None,
                   help="output folder (default: the specplug cache, zoo-build/)")
    b.add_argument("--only", nargs="+", choices=["target", "draft", "dllm"], default=None, help="models to train")
    b.add_argument("--steps", type=int, default=None, help="override every recipe's step count (quick trials)")
    b.add_argument("--threads", type=int, default=2,
                   help="torch threads; the shipped checksums reproduce with 2 (default: 2)")
    b.add_argument("--install", action="store_true",
                   help="also copy the results over the shipped models in the package (maintainers)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=run_build)
    v = zsub.add_parser("verify", help="check the shipped models against their sha256 manifests")
    v.set_defaults(func=run_verify)
    s = zsub.add_parser("sample", help="greedy output of a shipped model on held-out files")
    s.add_argument("name", choices=["target", "draft", "dllm"])
    s.add_argument("--num", type=int, default=3, help="held-out files to continue (default: 3)")
    s.add_argument("--max-tokens", type=int, default=64, help="tokens per decoder continuation (default: 64)")
    s.set_defaults(func=run_sample)
    q = zsub.add_parser("path", help="print a shipped model's folder (to pass to vLLM)")
    q.add_argument("name", choices=["target", "draft", "dllm"])
    q.set_defaults(func=run_path)


def run_build(args) -> int:
    import shutil

    from specplug.models.smollm2 import cache_root
    from specplug.zoo import build, recipes, shipped

    out = args.out or cache_root() / "zoo-build"
    names = args.only or list(recipes.ALL)
    manifests = build.build(out, names, steps=args.steps, threads=args.threads, progress=not args.quiet)
    for name, manifest in manifests.items():
        print(build.compare_with_shipped(name, manifest))
        if args.install:
            dest = shipped.SHIPPED_DIR / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(out / name, dest)
            print(f"{name}: installed into {dest}")
        print(f"{name}: {out / name}")
    return 0


def run_verify(args) -> int:
    from specplug.zoo import shipped

    bad = 0
    for name in shipped.NAMES:
        try:
            m = shipped.check_folder(shipped.SHIPPED_DIR / name)
        except shipped.ZooError as e:
            print(f"{name}: FAILED: {e}")
            bad += 1
            continue
        print(f"{name}: ok, {len(m['files'])} files; {m['parameters'] / 1e6:.2f}M parameters, held-out "
              f"{m['held_out_loss_kind']} loss {m['held_out_loss']} nats, "
              f"perplexity {m['held_out_perplexity']} (uniform {m['uniform_perplexity']})")
    return 1 if bad else 0


def run_sample(args) -> int:
    from specplug.zoo import samples

    if args.name == "dllm":
        for prompt, draft, truth, steps in samples.drafter_samples(args.num):
            print(f"--- prompt (end) ---\n{prompt[-200:]}\n--- drafted block ({steps} denoising steps) ---\n"
                  f"{draft!r}\n--- actual next tokens ---\n{truth!r}\n")
        return 0
    for prompt, text in samples.decoder_samples(args.name, args.num, max_tokens=args.max_tokens):
        print(f"--- prompt (end) ---\n{prompt[-200:]}\n--- greedy continuation ---\n{text}\n")
    return 0


def run_path(args) -> int:
    from specplug.zoo import ZooError, zoo_model

    try:
        print(zoo_model(args.name))
    except ZooError as e:
        print(f"error: {e}")
        return 1
    return 0
