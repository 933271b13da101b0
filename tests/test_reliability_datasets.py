"""Issue 8, bad input: datasets. A json that is not COCO, missing categories, a dataset
registered twice, images missing on disk: each is said before training starts, with the
file and the fix, and the user's json and images stay as they were."""

import json
import shutil

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2nb.data import make_synthetic_dataset, resolve_dataset
from d2nb.data.register import register_coco_json
from d2nb.errors import D2nbError
from d2nb.train import build_config, train
from d2nb.zoo import CPU_RECIPE
from reliability_support import TINY, CaptureLog, assert_message, tiny_settings, unchanged


@pytest.fixture
def user_dataset(tmp_path):
    """A user's COCO dataset: a json and its images in one folder (the synthetic shapes)."""
    splits = make_synthetic_dataset(TINY, root=tmp_path / "made")
    json_file, images = splits["train"]
    folder = tmp_path / "shapes"
    shutil.copytree(images, folder)
    shutil.copy(json_file, folder / "annotations.json")
    return folder / "annotations.json"


def edit_json(json_file, change):
    coco = json.loads(json_file.read_text())
    change(coco)
    json_file.write_text(json.dumps(coco))


def refused(json_file, tmp_path, **settings) -> D2nbError:
    """The error of the training cell for this dataset; raised before the run's folder is made."""
    with unchanged(json_file.parent), pytest.raises(D2nbError) as error:
        train(tiny_settings(tmp_path / "run", dataset=str(json_file), config=CPU_RECIPE, **settings))
    assert not (tmp_path / "run").exists()
    return error.value


@pytest.mark.parametrize("content, problem, fix", [
    ("[1, 2, 3]", "is not a COCO instances file: it has no images, annotations, categories",
     "export the annotations in COCO format (images, annotations, categories)"),
    ('{"info": {}, "licenses": []}', "it has no images, annotations, categories", "COCO format"),
    ("<html>Roboflow login</html>", "is not valid JSON (Expecting value: line 1 column 1",
     "export the annotations as COCO json"),
])
def test_a_json_that_is_not_coco(user_dataset, tmp_path, content, problem, fix):
    user_dataset.write_text(content)
    error = refused(user_dataset, tmp_path)
    assert_message(error, [repr(str(user_dataset.resolve())), problem], [fix])


def test_categories_missing_from_the_json(user_dataset, tmp_path):
    edit_json(user_dataset, lambda coco: coco.pop("categories"))
    error = refused(user_dataset, tmp_path)
    assert_message(error, ["is not a COCO instances file: it has no categories"], ["(images, annotations, categories)"])


def test_an_empty_categories_list(user_dataset, tmp_path):
    edit_json(user_dataset, lambda coco: coco.update(categories=[]))
    error = refused(user_dataset, tmp_path)
    assert_message(error, ["declares no categories (its 'categories' list is empty)"],
                   ["add one {'id': 1, 'name': 'your class'} entry per class to 'categories'"])


def test_annotations_of_undeclared_categories(user_dataset, tmp_path):
    edit_json(user_dataset, lambda coco: coco.update(categories=coco["categories"][:2]))  # drop square, star
    error = refused(user_dataset, tmp_path)
    assert_message(error, ["annotations of dataset 'annotations'", "use category ids that its 'categories' list does "
                           "not declare: [3, 4]"],
                   ["add those categories to the json", "fix_coco(d2nb.data.validate.validate_coco(json_file), "])


def test_images_missing_on_disk(user_dataset, tmp_path):
    gone = sorted(user_dataset.parent.glob("*.png"))[:2]
    for path in gone:
        path.unlink()
    error = refused(user_dataset, tmp_path)
    assert_message(error, [f"2 of the {TINY.num_train} images of dataset 'annotations'",
                           f"are missing under '{user_dataset.parent.resolve()}'", gone[0].name],
                   ["copy the images there, or pass image_root=", "fix_coco("])


def test_an_image_root_that_does_not_exist(user_dataset, tmp_path):
    error = refused(user_dataset, tmp_path, image_root=str(tmp_path / "pictures"))
    assert_message(error, [f"image folder '{tmp_path / 'pictures'}' for", "does not exist"],
                   ["pass image_root= the folder holding the images named in the json"])


def test_a_json_path_that_does_not_exist(tmp_path):
    (tmp_path / "notes.md").write_text("keep\n")
    with unchanged(tmp_path), pytest.raises(D2nbError) as error:
        build_config(tiny_settings(tmp_path / "run", dataset=str(tmp_path / "annotations.json")))
    assert_message(error.value, [f"COCO annotation file '{tmp_path / 'annotations.json'}' does not exist"],
                   ["check the path"])


def test_a_dataset_registered_twice_is_registered_once(user_dataset, tmp_path):
    with unchanged(user_dataset.parent):
        first = resolve_dataset(str(user_dataset))
        names, loader = DatasetCatalog.list(), DatasetCatalog[first.train]
        again = resolve_dataset(str(user_dataset))  # the cell run a second time
        build_config(tiny_settings(tmp_path / "run", dataset=str(user_dataset)))  # and the training cell
        build_config(tiny_settings(tmp_path / "run", dataset=str(user_dataset)))
    assert again == first and DatasetCatalog.list() == names and DatasetCatalog[first.train] is loader
    assert len(DatasetCatalog.get(first.train)) == TINY.num_train


def test_a_name_registered_again_from_other_files_says_it_replaces_them(user_dataset, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(user_dataset.parent, other)
    edit_json(other / "annotations.json", lambda coco: coco.update(images=coco["images"][:3]))
    register_coco_json("d2nb_test_twice", user_dataset)
    with unchanged(user_dataset.parent), unchanged(other), CaptureLog("d2nb.data") as log:
        register_coco_json("d2nb_test_twice", other / "annotations.json")
    assert (f"dataset 'd2nb_test_twice' is registered again, now from '{(other / 'annotations.json').resolve()}' "
            f"(before: '{user_dataset.resolve()}'); the new registration replaces the old") in log.text
    assert DatasetCatalog.list().count("d2nb_test_twice") == 1 and len(DatasetCatalog.get("d2nb_test_twice")) == 3
    assert MetadataCatalog.get("d2nb_test_twice").json_file == str((other / "annotations.json").resolve())
