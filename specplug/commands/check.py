"""`specplug check CONFIG`: validate a config file and print what it resolves to."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="validate a specplug YAML/JSON config and print it resolved")
    p.add_argument("config", help="path to a specplug .yaml/.yml/.json file")
    p.set_defaults(func=run)


def run(args) -> int:
    from specplug.config import SpecplugConfig, SpecplugConfigError

    try:
        cfg = SpecplugConfig.from_yaml(args.config)
    except SpecplugConfigError as e:
        print(f"error: {e}")
        return 1
    print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return 0
