"""`specplug models get smollm2|smollm2-draft|smollm2-dllm [--dtype float32]`: build a local model
folder offline; `specplug models distill smollm2-draft|smollm2-dllm`: retrain a shipped drafter here."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="build local model folders (no hub access)")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    g = msub.add_parser("get", help="build (or locate) a model folder and print its path")
    g.add_argument("name", choices=["smollm2", "smollm2-draft", "smollm2-dllm"],
                   help="model to build (smollm2-draft: the distilled draft decoder, smollm2-dllm: the distilled "
                        "block-diffusion drafter, always float32; both from their shipped layers)")
    g.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    g.add_argument("--force", action="store_true", help="rebuild even if the cached folder checks out")
    g.set_defaults(func=run_get)
    d = msub.add_parser("distill", help="distill a drafter from SmolLM2 here (teacher answers, then training)")
    d.add_argument("name", choices=["smollm2-draft", "smollm2-dllm"])
    d.add_argument("--num-prompts", type=int, default=768, help="local prompts the target answers")
    d.add_argument("--max-tokens", type=int, default=256, help="greedy tokens per answer")
    d.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's, 5 / 4)")
    d.add_argument("--out", type=Path, default=None, help="where to write the layers (default: the specplug cache)")
    d.add_argument("--install", action="store_true", help="write them over the shipped ones in specplug/distill/weights")
    d.set_defaults(func=run_distill)
    w = msub.add_parser("swift-search", help="search SWIFT's skip set for SmolLM2 on held-out teacher answers")
    w.add_argument("name", choices=["smollm2"])
    # defaults: the search that made the shipped set (docs/models.md); SmolLM2 has little to skip
    w.add_argument("--skip-ratios", default="0.1,0.2,0.3", help="comma-separated ratios to search (the best kept)")
    w.add_argument("--candidates", type=int, default=80, help="skip sets scored per ratio")
    w.add_argument("--num-prompts", type=int, default=768, help="as for distill (the same teacher answers)")
    w.add_argument("--max-tokens", type=int, default=256)
    w.add_argument("--install", action="store_true", help="write specplug/distill/weights/smollm2-swift.json")
    w.set_defaults(func=run_swift_search)


def run_get(args) -> int:
    from specplug.models.smollm2 import ModelSetupError, build_smollm2

    try:
        if args.name == "smollm2":
            path = build_smollm2(args.dtype, force=args.force)
        else:
            from specplug.distill.shipped import build_drafter

            path = build_drafter(args.name, args.dtype, force=args.force)
    except ModelSetupError as e:
        print(f"error: {e}")
        return 1
    print(path)
    return 0


def run_distill(args) -> int:
    from specplug.distill.build import distill
    from specplug.distill.shipped import SHIPPED

    out = SHIPPED / args.name if args.install else args.out
    distill(args.name, args.num_prompts, args.max_tokens, args.epochs, out)
    return 0


def run_swift_search(args) -> int:
    from specplug.distill.build import swift_search

    ratios = [float(r) for r in args.skip_ratios.split(",") if r.strip()]
    if not ratios or not all(0 < r < 1 for r in ratios):
        raise ValueError(f"--skip-ratios: expected numbers in (0, 1), got {args.skip_ratios!r}")
    swift_search(ratios, args.candidates, args.num_prompts, args.max_tokens, args.install)
    return 0
