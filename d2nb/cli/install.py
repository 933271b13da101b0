"""``d2nb install``: detectron2 from its GitHub repository (through the wheel cache), when it is missing."""


def add_parser(sub):
    from d2nb.install import add_arguments

    return add_arguments(sub.add_parser("install", help="install detectron2 (pinned commit, wheel cache) if it is missing"))


def run(args) -> int:
    from d2nb.install import run

    return run(args)
