"""Training: held-out metrics and spatial k-fold cross-validation by blocks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from pyproj import Transformer

from lcstack.config import CVConfig, ModelConfig
from lcstack.errors import InvalidInputError
from lcstack.evaluate import spatial_blocks, spatial_folds
from lcstack.training import train_model

LC = {"crop": 1, "forest": 2, "water": 3}
SL = {"wheat": 2, "maize": 3}
UTM30 = Transformer.from_crs("EPSG:32630", "EPSG:4326", always_xy=True)


def _table(n=240, seed=0):
    """Points over ~12 x 12 km in UTM 30N; features carry the class plus noise."""
    rng = np.random.default_rng(seed)
    e = rng.uniform(400_000, 412_000, n)
    nn = rng.uniform(4_070_000, 4_082_000, n)
    lon, lat = UTM30.transform(e, nn)
    cat = rng.integers(1, 4, n)
    sub = np.where(cat == 1, rng.integers(2, 4, n), 1)
    feats = {
        f"f{i}": (cat + (sub - 1) * 0.5 * (i == 0) + rng.normal(0, 0.6, n)).astype(np.float32)
        for i in range(4)
    }
    names = {v: k for k, v in LC.items()}
    subnames = {v: k for k, v in SL.items()}
    return pd.DataFrame(
        {
            **feats,
            "category": cat,
            "subcategory": sub,
            "category_name": [names[c] for c in cat],
            "subcategory_name": [subnames.get(s) for s in sub],
            "latitude": lat,
            "longitude": lon,
            "line": np.arange(2, n + 2),
        }
    )


def test_spatial_folds_keep_blocks_together_and_follow_the_seed():
    df = _table()
    folds = spatial_folds(df, folds=5, block_size=2000, random_state=1)
    blocks = spatial_blocks(df, 2000)
    assert blocks.max() + 1 == 36  # 12 km / 2 km = 6 blocks a side
    test_sets = [te for _, te in folds]
    assert np.array_equal(np.sort(np.concatenate(test_sets)), np.arange(len(df)))  # each row tested once
    fold_of_block: dict[int, int] = {}
    for k, (tr, te) in enumerate(folds):
        assert not np.intersect1d(tr, te).size and len(tr) + len(te) == len(df)
        for b in np.unique(blocks[te]):
            assert fold_of_block.setdefault(int(b), k) == k  # a block never straddles two folds
        assert not set(blocks[tr]) & set(blocks[te])
    # blocks are squares of 2 km in metres: points 2 km apart in easting never share one
    again = spatial_folds(df, folds=5, block_size=2000, random_state=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = spatial_folds(df, folds=5, block_size=2000, random_state=2)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))
    with pytest.raises(InvalidInputError, match=r"1 block\(s\) of 50000 m, fewer than the 5 folds"):
        spatial_folds(df, folds=5, block_size=50_000)


def test_blocks_are_metres():
    e = np.array([401_000.0, 401_900.0, 402_100.0])
    lon, lat = UTM30.transform(e, np.full(3, 4_071_000.0))
    b = spatial_blocks(pd.DataFrame({"longitude": lon, "latitude": lat}), 1000)
    assert b[0] == b[1] != b[2]


def test_train_model_writes_cv_figures(tmp_path):
    df = _table()
    options = ModelConfig(params={"n_estimators": 15}, cv=CVConfig(folds=4, block_size=3000))
    meta = train_model(df, str(tmp_path / "m"), lc_labels=LC, sl_labels=SL, options=options)
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["level1"]["overall_accuracy"] == meta["metrics"]["level1"]["overall_accuracy"]
    cv = metrics["cv"]
    assert (
        cv["folds"] == 4 and cv["block_size_m"] == 3000 and cv["n_blocks"] == 25
    )  # 12 km off the 3 km grid lines: 5 x 5
    assert sum(cv["n_test"]) == len(df)
    for level in ("level1", "level2"):
        for score in ("overall_accuracy", "kappa", "macro_f1"):
            s = cv[level][score]
            per_fold = [f[score] for f in cv[level]["per_fold"]]
            assert len(per_fold) == 4 and s["n_folds"] == 4
            assert s["mean"] == pytest.approx(np.mean(per_fold)) and s["std"] == pytest.approx(
                np.std(per_fold, ddof=1)
            )
    assert 0.5 < cv["level1"]["overall_accuracy"]["mean"] <= 1 and cv["level1"]["overall_accuracy"]["std"] > 0
    train_model(df, str(tmp_path / "m2"), lc_labels=LC, sl_labels=SL, options=options)
    assert json.loads((tmp_path / "m2" / "metrics.json").read_text())["cv"] == cv  # seeded: same figures
    # without cv: the quick held-out split only
    train_model(
        df, str(tmp_path / "m3"), lc_labels=LC, sl_labels=SL, options=ModelConfig(params={"n_estimators": 5})
    )
    assert "cv" not in json.loads((tmp_path / "m3" / "metrics.json").read_text())


def test_cv_options_are_validated():
    assert ModelConfig.model_validate({"cv": {"folds": 5, "block_size": 2000}}).cv == CVConfig()
    for bad in ({"folds": 1}, {"block_size": 0}, {"blocks": 3}):
        with pytest.raises(ValidationError):
            ModelConfig.model_validate({"cv": bad})


def test_workflow_train_with_cv_writes_metrics(demo_run):
    """`model.cv` in the run config: a model of its own (new key) whose metrics.json has the cv figures."""
    import dask

    from lcstack import __version__
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow, _digest

    area, cfg, _ = demo_run
    with Workflow(cfg, progress=False) as wf:
        plain_key = wf.model_key()
        # the key of a model without cv is the one from before `cv` existed (models trained then are reused)
        original = ("estimator", "params", "test_size", "block_size", "random_state")
        before = {k: v for k, v in cfg.model.model_dump().items() if k in original}  # later options unset
        assert plain_key == _digest({"dataset": wf.dataset_key(), "model": before, "v": __version__})
    cv_cfg = load_config(area.config, model={"cv": {"folds": 3, "block_size": 500}})
    with dask.config.set(scheduler="threads"), Workflow(cv_cfg, progress=False) as wf:
        assert wf.model_key() != plain_key
        result = wf.train()
        metrics = json.loads(open(f"{wf.model_url()}/metrics.json").read())
    assert not result.reused and result.details["metrics"]["cv"] == metrics["cv"]
    assert (
        metrics["cv"]["folds"] == 3 and sum(metrics["cv"]["n_test"]) == metrics["n_train"] + metrics["n_test"]
    )
    for level in ("level1", "level2"):
        assert set(metrics["cv"][level]) == {"overall_accuracy", "kappa", "macro_f1", "per_fold"}
        assert 0 < metrics["cv"][level]["overall_accuracy"]["mean"] <= 1
