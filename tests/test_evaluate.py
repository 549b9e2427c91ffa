from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from lcstack.errors import InvalidInputError, LcstackWarning
from lcstack.evaluate import evaluate, location_split, plot_confusion

LABELS = {"water": 3, "crop": 1, "forest": 2}  # deliberately not in code order


def test_evaluate_hand_computed():
    y_true = [1, 1, 1, 2, 2, 3]
    y_pred = [1, 1, 2, 2, 3, 3]
    r = evaluate(y_true, y_pred, labels=LABELS)
    assert r["labels"] == ["crop", "forest", "water"]
    assert r["codes"] == [1, 2, 3]
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r["overall_accuracy"] == pytest.approx(4 / 6)
    # kappa: p_o = 4/6; p_e = (3*2 + 2*2 + 1*2) / 36 = 12/36
    assert r["kappa"] == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))
    crop, forest, water = (r["per_class"][k] for k in ("crop", "forest", "water"))
    assert crop == {
        "code": 1,
        "precision": 1.0,
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(0.8),
        "support": 3,
    }
    assert forest["precision"] == 0.5 and forest["recall"] == 0.5 and forest["support"] == 2
    assert water["precision"] == 0.5 and water["recall"] == 1.0 and water["f1"] == pytest.approx(2 / 3)
    assert r["n_samples"] == 6
    json.dumps(r, allow_nan=False)


def test_evaluate_absent_class_and_unknown_code():
    r = evaluate(np.array([1, 1]), np.array([1, 1]), labels=LABELS)
    assert r["confusion_matrix"] == [[2, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert r["per_class"]["water"]["support"] == 0 and r["per_class"]["water"]["precision"] == 0.0
    json.dumps(r, allow_nan=False)  # kappa undefined -> None, not NaN
    with pytest.raises(InvalidInputError, match=r"codes \[7\]"):
        evaluate([1, 7], [1, 1], labels=LABELS)


def _points(n_locations=40, repeats=3, seed=0):
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-3, -2, n_locations)
    lat = rng.uniform(40, 41, n_locations)
    idx = np.repeat(np.arange(n_locations), repeats)
    df = pd.DataFrame({"longitude": lon[idx], "latitude": lat[idx], "category": idx % 4 + 1})
    df.loc[df.index % repeats == 1, "longitude"] += 1e-9  # below the 1e-7 rounding: same location
    return df.sample(frac=1, random_state=seed).reset_index(drop=True)


def test_location_split_keeps_duplicates_together():
    df = _points()
    train, test = location_split(df, test_size=0.25, random_state=3)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(df)
    key = lambda i: (round(df.longitude.iloc[i], 7), round(df.latitude.iloc[i], 7))  # noqa: E731
    assert not {key(i) for i in train} & {key(i) for i in test}
    assert set(df.category.iloc[train]) == {1, 2, 3, 4}
    assert 0.15 < len(test) / len(df) < 0.35


def test_location_split_blocks():
    df = _points(200, 1)
    train, test = location_split(df, block_size=0.25)
    block = lambda i: (df.longitude.iloc[i] // 0.25, df.latitude.iloc[i] // 0.25)  # noqa: E731
    assert not {block(i) for i in train} & {block(i) for i in test}


def test_location_split_warns_when_class_cannot_be_in_train():
    df = _points(20, 1)
    df.loc[0, "category"] = 9  # a class at a single location
    train, _ = location_split(df, test_size=0.5, random_state=0)
    assert 9 in set(df.category.iloc[train])  # redrawn until class 9's only location trains
    only = pd.DataFrame({"longitude": [0.0, 1.0], "latitude": [0.0, 1.0], "category": [1, 2]})
    with pytest.warns(LcstackWarning, match="lacks classes"):
        location_split(only, test_size=0.5)
    with pytest.raises(InvalidInputError, match="distinct location"):
        location_split(only.iloc[[0, 0]], test_size=0.5)


def test_plot_confusion_png(tmp_path):
    r = evaluate([1, 1, 1, 2, 2, 3], [1, 1, 2, 2, 3, 3], labels=LABELS)
    path = tmp_path / "plots" / "confusion.png"
    plot_confusion(r, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    buf = io.BytesIO()
    plot_confusion(r, buf)
    assert buf.getvalue()[:4] == b"\x89PNG"
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # no pyplot state leaked
