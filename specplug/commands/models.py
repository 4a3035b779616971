"""`specplug models get smollm2 [--dtype float32]`: build a local model folder offline."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="build local model folders (no hub access)")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    g = msub.add_parser("get", help="build (or locate) a model folder and print its path")
    g.add_argument("name", choices=["smollm2"], help="model to build")
    g.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    g.add_argument("--force", action="store_true", help="rebuild even if the cached folder checks out")
    g.set_defaults(func=run_get)


def run_get(args) -> int:
    from specplug.models.smollm2 import ModelSetupError, build_smollm2

    try:
        path = build_smollm2(args.dtype, force=args.force)
    except ModelSetupError as e:
        print(f"error: {e}")
        return 1
    print(path)
    return 0
