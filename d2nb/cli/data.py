"""``d2nb data``: the dataset-preparation notebook's steps from a shell.

    d2nb data prepare path/to/export --name mydata --output-dir runs/mydata   # 02_dataset_prep's steps
    d2nb data check                                   # builtin datasets under $DETECTRON2_DATASETS
    d2nb data download annotations val2017            # COCO 2017 into $DETECTRON2_DATASETS/coco
    d2nb data validate train.json --image-root imgs --fix fixed.json --report report.json
    d2nb data subset --builtin coco_2017_val --num-images 100     # coco_2017_val_100's file
    d2nb data subset train.json small.json --num-images 50 --random --seed 1
    d2nb data split all.json train.json val.json --val-fraction 0.2
    d2nb data convert voc VOC2007/Annotations voc.json
    d2nb data convert labelme labelme_folder labelme.json
    d2nb data convert yolo labels/ yolo.json --images images/ --classes classes.txt

``validate`` exits with 1 when errors remain (after ``--fix``, in the fixed file).
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("data", help="check, download, validate, subset and convert datasets",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)

    prepare = actions.add_parser("prepare", help="02_dataset_prep: detect, convert, register and check every split",
                                 description="The steps of notebooks/02_dataset_prep.ipynb; each flag is one of its "
                                             "parameters (dashes for underscores).")
    prepare.add_argument("dataset", help="synthetic, a registered name, a COCO json, or a Roboflow/YOLO/VOC/labelme folder")
    prepare.add_argument("--name", help="register as NAME_<split> (default: the folder's name)")
    prepare.add_argument("--image-root", help="image folder of a COCO json (default: the json's folder)")
    prepare.add_argument("--output-dir", default="runs/dataset_prep", help="report.json, converted jsons, fixes")
    prepare.add_argument("--keep-placeholder", action="store_true",
                         help="keep an export's placeholder category (id 0, no annotations) as a class")
    prepare.add_argument("--fix", action="store_true", help="write a repaired copy of the main split")
    prepare.add_argument("--expect-masks", action="store_true", help="report every annotation without a mask")
    prepare.add_argument("--check-images", action=argparse.BooleanOptionalAction, default=True,
                         help="read the image headers (--no-check-images is faster on huge datasets)")
    prepare.add_argument("--subset-size", type=int, default=0, help="also write a random subset of N images")
    prepare.add_argument("--subset-seed", type=int, default=0)

    check = actions.add_parser("check", help="which builtin datasets are in $DETECTRON2_DATASETS")
    check.add_argument("--root", help="datasets folder (default: $DETECTRON2_DATASETS, else ./datasets)")
    check.add_argument("--family", nargs="*", help="only families containing these words, e.g. COCO VOC")

    download = actions.add_parser("download", help="download and extract COCO 2017")
    download.add_argument("parts", nargs="*", default=["annotations", "val2017"],
                          help="annotations, val2017, train2017 (default: annotations val2017)")
    download.add_argument("--root", help="datasets folder (default: $DETECTRON2_DATASETS, else ./datasets)")
    download.add_argument("--base-url", default=None, help="a mirror with cocodataset.org's paths")
    download.add_argument("--keep-archives", action="store_true", help="keep the zip files after extraction")

    validate = actions.add_parser("validate", help="check a COCO json and its images")
    validate.add_argument("source", help="COCO json path or registered dataset name")
    validate.add_argument("--image-root", help="image folder (default: the json's folder)")
    validate.add_argument("--expect-masks", action="store_true", help="report annotations without a mask")
    validate.add_argument("--no-images", action="store_true", help="do not read image files (faster)")
    validate.add_argument("--report", help="write the summary as json here")
    validate.add_argument("--fix", metavar="OUTPUT_JSON", help="write a repaired copy here")
    validate.add_argument("--drop-images-without-annotations", action="store_true")
    validate.add_argument("--drop-unused-categories", action="store_true",
                          help="also drop declared categories no annotation uses (changes class indices)")
    validate.add_argument("--no-clip", action="store_true", help="keep boxes reaching outside the image")

    subset = actions.add_parser("subset", help="a COCO json with N of the images")
    subset.add_argument("source", nargs="?", help="COCO json path or registered name")
    subset.add_argument("output", nargs="?", help="json to write")
    subset.add_argument("--builtin", help="a builtin name such as coco_2017_val: writes <json>_<N>.json beside it")
    subset.add_argument("--num-images", type=int, default=100)
    subset.add_argument("--random", action="store_true", help="a seeded random choice instead of the first N")
    subset.add_argument("--seed", type=int, default=0)
    subset.add_argument("--root", help="datasets folder for --builtin")

    split = actions.add_parser("split", help="split one COCO json into train and val jsons")
    split.add_argument("source")
    split.add_argument("train_json")
    split.add_argument("val_json")
    split.add_argument("--val-fraction", type=float, default=0.2)
    split.add_argument("--seed", type=int, default=0)

    convert = actions.add_parser("convert", help="Pascal VOC, labelme or YOLO to COCO json")
    convert.add_argument("format", choices=["voc", "labelme", "yolo"])
    convert.add_argument("input", help="VOC Annotations folder, labelme folder, or YOLO labels folder")
    convert.add_argument("output", help="COCO json to write")
    convert.add_argument("--images", help="image folder (required for yolo; VOC: default ../JPEGImages)")
    convert.add_argument("--classes", nargs="+", help="class names in order, or one classes.txt / data.yaml")
    convert.add_argument("--decimals", type=int, default=None,
                         help="yolo: round pixels to this many decimals (default: exact)")
    return parser


def run(args) -> int:
    return {"prepare": _prepare, "check": _check, "download": _download, "validate": _validate, "subset": _subset,
            "split": _split, "convert": _convert}[args.action](args)


def _prepare(args) -> int:
    from pathlib import Path

    from d2nb.data import dataset_splits, validate_splits, write_split_report
    from d2nb.data.subset import make_subset
    from d2nb.data.validate import fix_coco

    output_dir = Path(args.output_dir)
    prepared = dataset_splits(args.dataset, output_dir, name=args.name, image_root=args.image_root,
                              keep_placeholder=args.keep_placeholder)
    print(prepared)
    reports = validate_splits(prepared, check_images=args.check_images, expect_masks=True if args.expect_masks else None)
    for split, report in reports.items():
        print(f"[{split}] {report}")
    print(f"written: {write_split_report(reports, output_dir / 'report.json')}")
    main = reports[prepared.split_of(prepared.main_split)]
    source = main.json_file
    if args.fix:
        fixed = fix_coco(main, output_dir / "fixed.json")
        print(fixed)
        source = fixed.json_file
    if args.subset_size:
        print(f"written: {make_subset(source, output_dir / f'subset_{args.subset_size}.json', args.subset_size, 'random', seed=args.subset_seed)}")
    return 0 if all(report.ok for report in reports.values()) else 1


def _check(args) -> int:
    from d2nb.data.layout import check_layout, layout_table

    print(layout_table(check_layout(args.root, args.family), root=args.root))
    return 0


def _download(args) -> int:
    from d2nb.data.download import COCO_BASE_URL, download_coco

    done = download_coco(args.parts, args.root, args.base_url or COCO_BASE_URL, args.keep_archives)
    for part, state in done.items():
        print(f"{part}: {state}")
    return 0


def _validate(args) -> int:
    from d2nb.data.validate import fix_coco, validate_coco

    report = validate_coco(args.source, args.image_root, expect_masks=True if args.expect_masks else None,
                           check_images=not args.no_images)
    print(report)
    if args.report:
        print(f"report written to {report.save(args.report)}")
    if not args.fix:
        return 0 if report.ok else 1
    fixed = fix_coco(report, args.fix, clip_boxes=not args.no_clip,
                     drop_images_without_annotations=args.drop_images_without_annotations,
                     drop_unused_categories=args.drop_unused_categories)
    print(fixed)
    after = validate_coco(fixed.json_file, report.image_root, expect_masks=report.expect_masks,
                          check_images=not args.no_images)
    print(after.headline())
    return 0 if after.ok else 1


def _subset(args) -> int:
    from d2nb.data.subset import make_builtin_subset, make_subset
    from d2nb.errors import D2nbError

    selection = "random" if args.random else "first"
    if args.builtin:
        name = make_builtin_subset(args.builtin, args.num_images, args.root, selection, args.seed)
        print(f"registered {name}")
        return 0
    if not (args.source and args.output):
        raise D2nbError("subset needs SOURCE and OUTPUT (or --builtin NAME)",
                        "e.g. d2nb data subset train.json small.json --num-images 50")
    print(f"written: {make_subset(args.source, args.output, args.num_images, selection, args.seed)}")
    return 0


def _split(args) -> int:
    from d2nb.data.subset import split_train_val

    train, val = split_train_val(args.source, args.train_json, args.val_json, args.val_fraction, args.seed)
    print(f"written: {train} and {val}")
    return 0


def _convert(args) -> int:
    from d2nb.data import convert
    from d2nb.errors import D2nbError

    classes = args.classes[0] if args.classes and len(args.classes) == 1 and "." in args.classes[0] \
        else args.classes
    if args.format == "voc":
        written = convert.voc_to_coco(args.input, args.output, args.images, classes)
    elif args.format == "labelme":
        written = convert.labelme_to_coco(args.input, args.output, classes)
    else:
        if not (args.images and classes):
            raise D2nbError("yolo needs --images (the picture folder) and --classes",
                            "e.g. d2nb data convert yolo labels/ out.json --images images/ --classes classes.txt")
        written = convert.yolo_to_coco(args.images, args.input, args.output, classes, args.decimals)
    print(f"written: {written}")
    return 0
