"""Images are read only from under --image-root (symlinks followed) unless the run allows otherwise."""

import os

import pytest
from curation_factories import llava, save, textured, write_jsonl

from megatron_infimed.cli.prepare import main
from megatron_infimed.curation import PrepareConfig, prepare, read_outcomes


@pytest.fixture
def outside(tmp_path):
    """An image root holding one image, plus one record per way of naming a file outside it."""
    root = tmp_path / "root"
    root.mkdir()
    save(textured(seed=0), root / "inside.png")
    for seed, name in enumerate(("traversal", "absolute", "symlink"), start=1):
        save(textured(seed=seed), tmp_path / f"{name}.png")
    os.symlink(tmp_path / "symlink.png", root / "link.png")
    names = {"inside": "inside.png", "traversal": "../traversal.png", "absolute": str(tmp_path / "absolute.png"),
             "symlink": "link.png"}
    questions = ["Is there a lesion in the liver?", "Is the heart enlarged?", "Is there a pleural effusion?",
                 "Is the kidney normal?"]
    rows = [llava(rid, name, question=q) for (rid, name), q in zip(names.items(), questions)]
    return write_jsonl(tmp_path / "d.jsonl", rows), str(root)


def run(tmp_path, outside, **kwargs):
    path, root = outside
    return prepare(PrepareConfig(format="llava", input=path, image_root=root, out=str(tmp_path / "o"),
                                 progress=False, **kwargs))


def outcomes(tmp_path):
    return {line["id"]: line for line in read_outcomes(str(tmp_path / "o"))}


@pytest.mark.parametrize("rid", ["traversal", "absolute", "symlink"])
def test_image_outside_the_root_is_refused_with_a_reason_naming_its_path(tmp_path, outside, rid):
    run(tmp_path, outside)
    line = outcomes(tmp_path)[rid]
    assert line["reasons"] == ["load/image_outside_root"]
    assert f"{rid}.png" in line["detail"] and "outside the image root" in line["detail"]


def test_images_outside_the_root_are_counted_in_the_report(tmp_path, outside):
    report = run(tmp_path, outside)
    assert report["dropped"] == {"load/image_outside_root": 3} and report["kept"] == 1


def test_relative_path_inside_the_root_still_loads(tmp_path, outside):
    run(tmp_path, outside)
    line = outcomes(tmp_path)["inside"]
    assert line["reasons"] == [] and line["shard"] == 0


@pytest.mark.parametrize("rid", ["traversal", "absolute", "symlink"])
def test_allow_outside_image_root_accepts_the_image(tmp_path, outside, rid):
    run(tmp_path, outside, allow_outside_image_root=True)
    assert outcomes(tmp_path)[rid]["reasons"] == []


def test_cli_flag_allows_images_outside_the_root(tmp_path, outside, capsys):
    path, root = outside
    assert main(["--format", "llava", "--input", path, "--image-root", root, "--out", str(tmp_path / "o"),
                 "--no-progress", "--allow-outside-image-root"]) == 0
    assert "kept 4 of 4 records" in capsys.readouterr().out
