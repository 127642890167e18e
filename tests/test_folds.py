"""Cross-validation folds keep prepare's groups together: posts sharing an image (not the white
dummy) or a normalised text of >= 4 words never sit on both sides of a fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic_features import make_split

from stages import csvsafe, training
from stages.folds import training_groups
from stages.images import encode_jpeg, white_image


def _stored(dataset, image: Image.Image) -> str:
    digest, data = encode_jpeg(image)
    (dataset / "images_train").mkdir(parents=True, exist_ok=True)
    (dataset / "images_train" / f"{digest}.jpg").write_bytes(data)
    return f"images_train/{digest}.jpg"


def test_groups_link_shared_images_and_long_texts_but_not_the_dummy(tmp_path) -> None:
    dataset = tmp_path / "dataset"
    dummy = _stored(dataset, white_image(64))
    red = _stored(dataset, Image.new("RGB", (40, 30), (200, 30, 30)))
    rows = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5, 6],
            "label": ["a"] * 6,
            "text": [
                "Boat needed on Main Street now",
                "RT @x: boat needed on main street, now!",
                "sandy",
                "sandy",
                "unrelated words about a dog",
                "a different post entirely here",
            ],
            "image_path": [dummy, dummy, dummy, dummy, red, red],
        }
    )
    csvsafe.write_csv(rows[:4], dataset / "train_balanced.csv")
    csvsafe.write_csv(rows[4:], dataset / "val.csv")
    ids = np.array([6, 5, 4, 3, 2, 1])
    g = dict(zip(ids, training_groups(dataset, ids, 64, max_bits=30, min_words=4)))
    assert g[1] == g[2]  # the same text after normalisation (RT, @mention, punctuation)
    assert g[5] == g[6]  # the same image
    assert len({g[1], g[3], g[4], g[5]}) == 4  # dummy and the short "sandy" link nothing
    with pytest.raises(ValueError, match=r"1 feature ids are in neither .*\[99\]"):
        training_groups(dataset, np.array([1, 99]), 64, 30, 4)


def test_grouped_folds_never_split_a_group() -> None:
    pool = make_split(15, seed=3, separation=1.0)
    groups = np.arange(60) // 3  # 20 groups of 3 posts
    cfg = {
        "seed": 1,
        "fusion": "concat",
        "hidden": [8, 8],
        "dropout": 0.0,
        "lr": 0.01,
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "epochs": 2,
        "batch_size": 16,
        "patience": 2,
    }
    cv = training.cross_validate(pool, 4, "both", cfg, np.ones(4), 3, groups)
    for held in cv.held_out:
        rest = np.setdiff1d(np.arange(60), held)
        assert not set(groups[held]) & set(groups[rest])
    # Negative control: ungrouped folds do split some group.
    free = training.cross_validate(pool, 4, "both", cfg, np.ones(4), 3)
    assert any(set(groups[h]) & set(groups[np.setdiff1d(np.arange(60), h)]) for h in free.held_out)
