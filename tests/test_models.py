"""Model options (issue 18): estimators, class balance, importances, selection, classify with a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import yaml
from test_training import LC, SL, _table
from typer.testing import CliRunner

from lcstack.cli import app
from lcstack.config import ModelConfig, RebalanceConfig
from lcstack.errors import InvalidInputError
from lcstack.model import load_model, model_types
from lcstack.training import make_estimator, rebalance_rows, train_model

runner = CliRunner()


def _variant(area: Any, name: str, **changes: Any) -> Path:
    """A copy of the demo config beside it (same storage, registry and composites) with keys changed."""
    raw = yaml.safe_load(Path(area.config).read_text())
    raw.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        raw.pop(key)
    path = Path(area.config).with_name(name)
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args: str) -> Any:
    return runner.invoke(app, [*args, "--quiet", "--scheduler", "threads"])


# -- estimators: end to end from the CLI, saved and reloaded safely ------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "params", "family"),
    [
        ("lightgbm", {"n_estimators": 30, "num_leaves": 15}, "lightgbm.sklearn.LGBMClassifier"),
        (
            "hist_gradient_boosting",
            {"max_iter": 20},
            "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
        ),
    ],
)
def test_estimator_runs_end_to_end_from_the_cli(demo_run, estimator, params, family):
    if estimator == "lightgbm":
        pytest.importorskip("lightgbm")
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    area, _, _ = demo_run
    model = {"estimator": estimator, "params": params, "importance_repeats": 0}  # importances: see below
    cfg_path = _variant(area, f"{estimator}.yaml", model=model)
    result = _cli("run", str(cfg_path))
    assert result.exit_code == 0, result.output
    with Workflow(load_config(cfg_path), progress=False) as wf:
        url = wf.model_url()
        maps = [wf.map_urls(r) for r in wf.registry.find("maps", model=wf.model_key())]
    assert family in model_types((Path(url) / "model.skops").read_bytes())
    model, meta = load_model(url)  # the allow-list, no trusted types
    assert meta["estimator"] == estimator and type(model.estimator_level1_).__name__ in family
    import rasterio

    with rasterio.open(maps[0]["level1"]) as src:
        level1 = src.read(1)
    codes = set(np.unique(level1)) - {0}
    assert codes and codes <= set(json.loads((area.root / "lc_labels.json").read_text()).values())
    with rasterio.open(area.truth) as src:  # a boosted model agrees with the truth on most pixels
        ref = src.read(1)
    valid = level1 > 0
    assert np.mean(level1[valid] == ref[valid]) > 0.6


def test_xgboost_family_saves_and_loads(tmp_path):
    pytest.importorskip("xgboost")
    df = _table()
    opts = ModelConfig(estimator="xgboost", params={"n_estimators": 10}, importance_repeats=0)
    meta = train_model(df, str(tmp_path / "x"), lc_labels=LC, sl_labels=SL, options=opts)
    model, _ = load_model(tmp_path / "x")
    X = df[meta["features"]].to_numpy(np.float32)
    l1, l2 = model.predict_levels(X)
    assert set(l1) <= set(LC.values()) and np.mean(l1 == df["category"]) > 0.7  # codes 1..3, not 0..2


def test_class_path_needs_trusted_types_and_a_foreign_type_is_refused(tmp_path):
    df = _table()
    spec = {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 200}}
    with pytest.raises(InvalidInputError, match=r"LogisticRegression.*trusted_types") as err:
        train_model(df, str(tmp_path / "m"), lc_labels=LC, sl_labels=SL, options=ModelConfig(estimator=spec))
    assert not (tmp_path / "m" / "metadata.json").exists()  # nothing saved
    assert "sklearn.linear_model._logistic.LogisticRegression" in str(err.value)
    trusted = ("sklearn.linear_model._logistic.LogisticRegression",)
    opts = ModelConfig(estimator=spec, trusted_types=trusted, importance_repeats=0)
    train_model(df, str(tmp_path / "m"), lc_labels=LC, sl_labels=SL, options=opts)
    with pytest.raises(InvalidInputError, match=r"holds types no lcstack model holds.*LogisticRegression"):
        load_model(tmp_path / "m")  # a file with a type outside the allow-list is refused
    model, _ = load_model(tmp_path / "m", trusted=trusted)
    assert type(model.estimator_level1_).__name__ == "LogisticRegression"
    # a class inside the allow-list needs no trust
    ok = ModelConfig(
        estimator={"class": "sklearn.ensemble.ExtraTreesClassifier", "params": {"n_estimators": 5}},
        importance_repeats=0,
    )
    train_model(df, str(tmp_path / "e"), lc_labels=LC, sl_labels=SL, options=ok)
    load_model(tmp_path / "e")
    with pytest.raises(InvalidInputError, match="cannot import 'sklearn.nope.Forest'"):
        make_estimator(ModelConfig(estimator={"class": "sklearn.nope.Forest"}))


# -- class imbalance -------------------------------------------------------------------------------------


def test_rebalance_caps_and_oversamples_the_training_rows_only():
    y = np.array([1] * 50 + [2] * 10 + [3] * 3)
    rows = np.arange(0, 63, 2)  # the training rows; the others are held out
    out = rebalance_rows(y, rows, RebalanceConfig(max_per_class=12, min_per_class=8), random_state=0)
    assert set(out) <= set(rows)  # never a held-out row
    counts = {c: int(np.sum(y[out] == c)) for c in (1, 2, 3)}
    assert counts == {1: 12, 2: 8, 3: 8}  # 25 capped to 12; 5 and 2 oversampled to 8
    assert np.array_equal(rebalance_rows(y, rows, None), rows)
    with pytest.raises(ValueError, match="min_per_class 9 > max_per_class 4"):
        RebalanceConfig(max_per_class=4, min_per_class=9)


def test_class_balance_options_reach_the_estimator_and_metrics(tmp_path):
    df = _table()
    df = df[(df["category"] != 3) | (np.arange(len(df)) % 6 == 0)].reset_index(drop=True)  # rare water
    opts = ModelConfig(
        params={"n_estimators": 10},
        class_weight="balanced_subsample",
        rebalance={"min_per_class": 40},
        importance_repeats=0,
    )
    meta = train_model(df, str(tmp_path / "b"), lc_labels=LC, sl_labels=SL, options=opts)
    balance = json.loads((tmp_path / "b" / "metrics.json").read_text())["class_balance"]
    assert balance["class_weight"] == "balanced_subsample" and balance["rebalance"]["min_per_class"] == 40
    assert balance["train_counts"]["water"] < 40 == balance["train_counts_rebalanced"]["water"]
    assert meta["metrics"]["n_test"] + meta["metrics"]["n_train"] == len(df)  # the test split untouched
    model, _ = load_model(tmp_path / "b")
    assert model.estimator_level1_.class_weight == "balanced_subsample"
    hgb = ModelConfig(estimator="hist_gradient_boosting", class_weight="balanced")
    assert make_estimator(hgb).class_weight == "balanced"
    with pytest.raises(InvalidInputError, match="balanced_subsample is for forests"):
        make_estimator(hgb.model_copy(update={"class_weight": "balanced_subsample"}))


# -- importances, selection, search ----------------------------------------------------------------------


def test_importances_selection_and_search(tmp_path):
    df = _table()
    rng = np.random.default_rng(3)
    for i in range(3):
        df.insert(4, f"noise{i}", rng.normal(size=len(df)).astype(np.float32))
    opts = ModelConfig(
        params={"n_estimators": 20},
        select={"method": "importance", "n_features": 4},
        search={"param_grid": {"max_depth": [1, 8]}, "folds": 3, "block_size": 3000},
        importance_repeats=3,
    )
    meta = train_model(df, str(tmp_path / "s"), lc_labels=LC, sl_labels=SL, options=opts)
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert meta["features"] == ["f0", "f1", "f2", "f3"]  # the noise left out, original order kept
    assert metrics["selection"]["chosen"] == meta["features"] and len(metrics["selection"]["from"]) == 7
    assert metrics["search"]["best_params"] == {"max_depth": 8} and len(metrics["search"]["candidates"]) == 2
    imp = metrics["importances"]["level1"]
    assert sorted(imp["features"]) == meta["features"] and imp["mean"] == sorted(imp["mean"], reverse=True)
    assert imp["mean"][0] > 0.05 and "level2" in metrics["importances"]
    for name in ("importance_level1.png", "importance_level2.png", "confusion_level1.png"):
        assert (tmp_path / "s" / name).read_bytes()[:4] == b"\x89PNG"
    # classification uses the chosen features out of a cube that has them all, in any order
    from lcstack.classify import classify

    cube = xr.DataArray(
        df[list(reversed(metrics["selection"]["from"]))].to_numpy(np.float32).T[:, None, :],
        dims=("feature", "y", "x"),
        coords={"feature": list(reversed(metrics["selection"]["from"]))},
    )
    level1 = classify(cube, str(tmp_path / "s"), engine="sklearn")["level1"].values[0]
    model, _ = load_model(tmp_path / "s")
    assert np.array_equal(level1, model.predict(df[meta["features"]].to_numpy(np.float32)))
    with pytest.raises(Exception, match="missing from the cube: f2"):
        classify(cube.drop_sel(feature="f2"), str(tmp_path / "s"))


def test_rfecv_selection_and_its_limits(tmp_path):
    df = _table()
    opts = ModelConfig(params={"n_estimators": 8}, select={"method": "rfecv", "block_size": 3000})
    opts = opts.model_copy(update={"importance_repeats": 0})
    meta = train_model(df, str(tmp_path / "r"), lc_labels=LC, sl_labels=SL, options=opts)
    assert 1 <= len(meta["features"]) <= 4 and meta["selected_from"] == ["f0", "f1", "f2", "f3"]
    bad = ModelConfig(estimator="hist_gradient_boosting", select={"method": "rfecv", "block_size": 3000})
    with pytest.raises(InvalidInputError, match="rfecv needs an estimator with feature_importances_"):
        train_model(df, str(tmp_path / "h"), lc_labels=LC, sl_labels=SL, options=bad)


# -- classify with an existing model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_area(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second demo area (another seed: other scenes and land cover), never trained on."""
    from lcstack.demo import make_demo_area

    return make_demo_area(tmp_path_factory.mktemp("other") / "area", size=256, seed=7)


def test_classify_another_area_with_a_registry_model(demo_run, other_area):
    from lcstack.config import load_config
    from lcstack.pipeline import Workflow

    area, cfg, _ = demo_run
    listed = runner.invoke(app, ["models", str(area.config), "--json"])
    assert listed.exit_code == 0, listed.output
    models = json.loads(listed.output)
    with Workflow(cfg, progress=False) as wf:
        key = wf.model_key()
    entry = next(m for m in models if m["key"] == key)
    assert entry["features"] and entry["created_at"] and entry["classes"]["level1"]
    assert 0 < entry["metrics"]["level1"]["overall_accuracy"] <= 1
    plain = runner.invoke(app, ["models", str(area.config)])
    assert key in plain.output and "features (" in plain.output

    # the other area's config: no points, the first area's storage (so its registry knows the model)
    other = _variant(other_area, "other.yaml", points=None, storage=str(area.root / "lcstack-data"))
    with Workflow(cfg, progress=False) as wf:  # the first area's maps, made by the same model
        own = {
            u: Path(u).read_bytes()
            for r in wf.registry.find("maps", model=key)
            for u in [wf.map_urls(r)["level1"]]
        }
    result = _cli("classify", str(other), "--model", key)
    assert result.exit_code == 0, result.output
    assert own and all(Path(u).read_bytes() == data for u, data in own.items()), (
        "the other area overwrote them"
    )
    with Workflow(load_config(other), progress=False) as wf:
        wf.use_model(key)
        recs = wf.registry.find("maps", model=key)
        tiles = {r["tile"] for r in recs}
        assert tiles and all(Path(wf.map_urls(r)["level1"]).is_file() for r in recs)
        theirs = {r["key"] for r in wf.maps()}
    with Workflow(cfg, progress=False) as wf:  # each config lists its own maps, though the model is shared
        mine = {r["key"] for r in wf.maps()}
    assert mine and theirs and not mine & theirs and mine | theirs == {r["key"] for r in recs}

    # composites with other features: a clear error naming the missing ones, no traceback, exit 2
    fewer = _variant(other_area, "fewer.yaml", points=None, indices=["ndvi"])
    result = _cli("classify", str(fewer), "--model", str(Path(entry["url"])))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "lack" in result.output and "_evi2" in result.output and "_mndwi" in result.output
    missing = _cli("classify", str(fewer), "--model", "nope123")
    assert missing.exit_code == 2 and "lcstack models" in missing.output
