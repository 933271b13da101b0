"""``d2nb install``: detectron2 from its GitHub repository, when it is missing."""


def add_parser(sub):
    return sub.add_parser("install", help="install detectron2 from GitHub if it is missing")


def run(args) -> int:
    from d2nb.install import main

    return main()
