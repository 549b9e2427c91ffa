"""Accuracy assessment and area estimation (Olofsson et al. 2014) and the sample design."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from lcstack.assess import (
    allocate_sample,
    assess,
    draw_sample,
    map_strata,
    map_values,
    read_reference,
    sample_csv,
    sample_size,
    stratified_estimates,
    write_assessment,
)
from lcstack.errors import InvalidInputError
from lcstack.store import Storage

NAMES = ["deforestation", "forest gain", "stable forest", "stable non-forest"]
# Olofsson et al. (2014), section 5: mapped pixels (30 m, 0.09 ha) and the sample error matrix,
# rows = map class, columns = reference class.
PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])
COUNTS = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])


def test_olofsson_worked_example():
    r = stratified_estimates(COUNTS, PIXELS * 0.09, names=NAMES)
    # Estimated area proportions (their Table 9; Eq. 4: W_i n_ij / n_i.), to the published 4 decimals.
    np.testing.assert_allclose(
        r["error_matrix"]["area_proportions"],
        [
            [0.0176, 0.0000, 0.0013, 0.0011],
            [0.0000, 0.0110, 0.0016, 0.0024],
            [0.0019, 0.0000, 0.2967, 0.0213],
            [0.0040, 0.0020, 0.0179, 0.6212],
        ],
        atol=5e-5,
    )
    oa = r["overall_accuracy"]
    assert round(oa["estimate"], 2) == 0.95 and round(oa["ci95"], 2) == 0.02  # published 0.95 ± 0.02
    c = r["classes"]
    # Published user's accuracies (Eq. 6): 0.88 ± 0.07, 0.73 ± 0.10, 0.93 ± 0.04, 0.96 ± 0.02.
    ua = [
        (round(c[k]["users_accuracy"]["estimate"], 2), round(c[k]["users_accuracy"]["ci95"], 2))
        for k in NAMES
    ]
    assert ua == [(0.88, 0.07), (0.73, 0.10), (0.93, 0.04), (0.96, 0.02)]
    # Published producer's accuracies (Eq. 3): 0.75, 0.85, 0.93, 0.96. Their half-widths, worked by hand
    # from Eq. 7 with N_i = mapped pixels: deforestation sqrt(V) = 0.1088 -> 0.21; forest gain 0.25.
    pa = [round(c[k]["producers_accuracy"]["estimate"], 2) for k in NAMES]
    assert pa == [0.75, 0.85, 0.93, 0.96]
    assert round(c["deforestation"]["producers_accuracy"]["ci95"], 2) == 0.21
    assert round(c["forest gain"]["producers_accuracy"]["ci95"], 2) == 0.25
    # Published error-adjusted areas (Eqs. 9-11): 21 158 ± 6 158, 11 686 ± 3 756, 285 770 ± 15 510,
    # 581 386 ± 16 282 ha (the mapped deforestation area is 18 000 ha).
    areas = [(round(c[k]["area"]["estimate"]), round(c[k]["area"]["ci95"])) for k in NAMES]
    assert areas == [(21158, 6158), (11686, 3756), (285770, 15510), (581386, 16282)]
    assert c["deforestation"]["map_area"] == pytest.approx(18_000)
    assert r["notes"] == []  # every stratum and class shows errors: no zero-width interval
    json.dumps(r, allow_nan=False)


def test_zero_width_intervals_are_named():
    """A stratum whose sample holds no error gets ± 0 (Wald): the result and the report say so."""
    from lcstack.assess import assessment_markdown

    counts = COUNTS.copy()
    counts[1] = [0, 75, 0, 0]  # forest gain: all 75 units agree
    counts[:, 1] = [0, 75, 0, 0]  # and no other stratum holds forest gain
    r = stratified_estimates(counts, PIXELS * 0.09, names=NAMES)
    c = r["classes"]["forest gain"]
    assert c["users_accuracy"]["ci95"] == 0 and c["area"]["ci95"] == 0
    assert len(r["notes"]) == 2 and all(note.startswith("forest gain: ") for note in r["notes"])
    assert "area interval has zero width" in r["notes"][1]
    r["map_area_ha"] = r.pop("map_area")
    for entry in r["classes"].values():
        entry["area_ha"], entry["map_area_ha"] = entry.pop("area"), entry.pop("map_area")
    assert "## Notes" in assessment_markdown(r) and r["notes"][1] in assessment_markdown(r)


def test_sample_size_eq13_and_allocation():
    # Olofsson et al. (2014), section 5.1.1: expected user's accuracies 0.7, 0.6, 0.9, 0.95 and a target
    # standard error of 0.01 for overall accuracy give n = (sum W_i S_i / 0.01)^2 = 641.
    weights = PIXELS / PIXELS.sum()
    assert sample_size(weights, [0.7, 0.6, 0.9, 0.95], target_se=0.01) == 641
    assert sample_size(weights, [0.7, 0.6, 0.9, 0.95], target_se=0.01, population=PIXELS.sum()) == 641
    alloc = allocate_sample(641, PIXELS, min_per_class=50)
    assert alloc.sum() == 641 and alloc.min() >= 50
    # the 441 beyond the minima go by area: stable non-forest gets 0.645 of them
    assert alloc[3] == 50 + round(441 * 0.645)
    small = allocate_sample(40, [5, 1000, 10])  # minimum lowered to 40 // 6 = 6, capped by pixels
    assert small.tolist()[0] == 5 and small.sum() == 40
    assert allocate_sample(10, [3, 4]).tolist() == [3, 4]  # all there is
    with pytest.raises(InvalidInputError):
        sample_size([0.5, 0.5], [0.9, 1.2])


def test_unsampled_stratum_is_an_error():
    with pytest.raises(InvalidInputError, match="deforestation"):
        stratified_estimates(np.zeros((4, 4)) + np.eye(4) * [0, 5, 5, 5], PIXELS, names=NAMES)


def _write_map(path, data, x0, y0=4_500_000.0, res=10.0, blocksize=32):
    profile = dict(
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype="uint8",
        crs="EPSG:32630",
        transform=from_origin(x0, y0, res, res),
        nodata=0,
        tiled=True,
        blockxsize=blocksize,
        blockysize=blocksize,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


@pytest.fixture
def two_tiles(tmp_path, monkeypatch):
    import lcstack.assess as assess_mod

    monkeypatch.setattr(assess_mod, "_STRIP_PIXELS", 64 * 32)  # several read windows per map
    rng = np.random.default_rng(1)
    a = rng.choice([0, 1, 2, 3], size=(96, 64), p=[0.1, 0.6, 0.25, 0.05]).astype("uint8")
    b = rng.choice([1, 2, 3], size=(96, 64), p=[0.2, 0.7, 0.1]).astype("uint8")
    maps = [_write_map(tmp_path / "a.tif", a, 500_000.0), _write_map(tmp_path / "b.tif", b, 500_640.0)]
    return maps, a, b


def test_strata_and_sample_from_two_tiles(two_tiles):
    maps, a, b = two_tiles
    pixels, area = map_strata(maps)
    assert pixels == {c: int((a == c).sum() + (b == c).sum()) for c in (1, 2, 3)}
    assert area[3] == pytest.approx(pixels[3] * 0.01)  # 10 m pixels = 0.01 ha
    alloc = {1: 30, 2: 20, 3: 12}
    s = draw_sample(maps, alloc, seed=4)
    assert s.equals(draw_sample(maps, alloc, seed=4)) and not s.equals(draw_sample(maps, alloc, seed=5))
    assert s["map_class"].value_counts().to_dict() == alloc
    # pixel centres: the points land on pixels of their class, no pixel twice
    assert (map_values(maps, s["longitude"], s["latitude"]) == s["map_class"]).all()
    assert not s[["latitude", "longitude"]].round(7).duplicated().any()
    text = sample_csv(s)
    assert text.splitlines()[0] == "latitude;longitude;category" and text.splitlines()[1].endswith(";")
    assert len(text.splitlines()) == 63
    with pytest.raises(InvalidInputError, match="code 3"):
        draw_sample(maps, {3: 10**6})
    coarse = _write_map(Path(maps[0]).with_name("c.tif"), a, 600_000.0, res=20.0)
    with pytest.raises(InvalidInputError, match="different pixel sizes"):
        map_strata([maps[0], coarse])


def test_assess_maps_and_reference_errors(two_tiles, tmp_path):
    maps, a, b = two_tiles
    labels = {"crop": 1, "forest": 2, "water": 3}
    s = draw_sample(maps, {1: 30, 2: 30, 3: 30}, seed=0)
    names = {v: k for k, v in labels.items()}
    ref = s["map_class"].map(names).to_numpy(copy=True)
    ref[:9] = "water"  # some disagreement
    lines = ["latitude;longitude;category"] + [
        f"{la:.8f};{lo:.8f};{c}" for la, lo, c in zip(s.latitude, s.longitude, ref, strict=True)
    ]
    path = tmp_path / "validation.csv"
    path.write_text("\n".join(lines) + "\n")
    reference = read_reference(path, labels, labels_file="lc_labels.json")
    result = assess(maps, reference, labels, source=str(path))
    assert result["n_samples"] == 90 and result["labels"] == ["crop", "forest", "water"]
    assert result["map_area_ha"] == pytest.approx(((a > 0).sum() + b.size) * 0.01)
    agree = np.mean(ref == s["map_class"].map(names).to_numpy())
    assert 0 < result["overall_accuracy"]["estimate"] < 1 and agree < 1
    urls = write_assessment(result, str(tmp_path / "out"), storage=Storage(tmp_path))
    assert json.loads(open(urls["json"]).read())["classes"]["water"]["area_ha"]["ci95"] > 0
    assert open(urls["figure"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "| water |" in open(urls["report"]).read()

    path.write_text("\n".join(lines[:3] + [lines[3].replace(ref[2], "Watr")]) + "\n")
    with pytest.raises(
        InvalidInputError,
        match=r"(?s)validation.csv.*category 'Watr' on line\(s\) 4 is not in lc_labels.json.*did you mean",
    ):
        read_reference(path, labels, labels_file="lc_labels.json")
    path.write_text("latitude;longitude;category\n0.0;0.0;crop\n")
    with pytest.raises(InvalidInputError, match=r"outside every map \(line\(s\) 2\)"):
        assess(maps, read_reference(path, labels, labels_file="lc_labels.json"), labels, source=str(path))
    with pytest.raises(InvalidInputError, match="codes \\[2, 3\\]"):
        assess(maps, reference, {"crop": 1}, source=str(path))


def _truth_at(truth_path, lon, lat):
    from pyproj import Transformer

    with rasterio.open(truth_path) as src:
        tr = Transformer.from_crs("EPSG:4326", src.crs.to_wkt(), always_xy=True)
        xy = zip(*tr.transform(np.asarray(lon), np.asarray(lat)), strict=True)
        return np.array([v[0] for v in src.sample(xy, indexes=1)])


def demo_map(cfg):
    from lcstack.assess import workflow_maps
    from lcstack.pipeline import Workflow

    with Workflow(cfg, progress=False) as wf:
        (url,) = workflow_maps(wf, level=1)
    return url


def _clip_to(path, map_url, like):
    from rasterio.windows import from_bounds

    with rasterio.open(map_url) as src, rasterio.open(like) as ref:
        window = from_bounds(*ref.bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(1, window=window)
        assert data.shape == ref.shape and src.window_transform(window) == ref.transform
        return _write_map(path, data, ref.transform.c, ref.transform.f)


def test_demo_sample_design_then_assess_covers_the_truth(demo_run, tmp_path):
    """sample-design, categories filled from truth.tif, assess: the intervals hold the true values."""
    import pandas as pd
    from typer.testing import CliRunner

    from lcstack.cli import app
    from lcstack.inputs import read_lc_labels

    area, cfg, _ = demo_run
    runner = CliRunner()
    # The map covers the AOI grid, a few pixels wider than truth.tif: assess the map over truth's extent,
    # so that every pixel of the population has a true class.
    clipped = _clip_to(tmp_path / "level1.tif", demo_map(cfg), area.truth)
    design = tmp_path / "validation.csv"
    # The demo map is ~98 % right, so errors are rare: strata whose sample holds no error get a zero-width
    # interval (Wald), and with n = 500 only 5-7 of the 8 class areas were covered; 3000 covers 7-8.
    args = ["sample-design", str(area.config), "--n", "3000", "--seed", "0", "--map", clipped, "-q"]
    res = runner.invoke(app, [*args, "--out", str(design)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, args).stdout == design.read_text()  # same seed, same sample
    sample = pd.read_csv(design, sep=";", keep_default_na=False)
    assert list(sample.columns) == ["latitude", "longitude", "category"] and len(sample) == 3000
    assert (sample["category"] == "").all()

    labels = read_lc_labels(cfg.lc_labels)
    names = {c: n for n, c in labels.items()}
    truth = _truth_at(area.truth, sample["longitude"], sample["latitude"])
    sample["category"] = [names.get(int(t), "") for t in truth]
    sample = sample[sample["category"] != ""]
    reference = tmp_path / "reference.csv"
    sample.to_csv(reference, sep=";", index=False, float_format="%.8f")
    args = ["assess", str(area.config), "--reference", str(reference), "--map", clipped, "--json", "-q"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert Path(result["outputs"]["report"]).is_file() and Path(result["outputs"]["figure"]).is_file()

    with rasterio.open(clipped) as src, rasterio.open(area.truth) as ref:
        m, t = src.read(1), ref.read(1)
    valid = (m > 0) & (t > 0)
    true_oa = float(np.mean(m[valid] == t[valid]))
    oa = result["overall_accuracy"]
    assert abs(oa["estimate"] - true_oa) <= oa["ci95"], (oa, true_oa)
    inside = []
    for name, c in result["classes"].items():
        true_ha = float(((t == labels[name]) & valid).sum()) * 0.01  # 10 m pixels
        est = c["area_ha"]
        inside.append(abs(est["estimate"] - true_ha) <= est["ci95"])
    assert sum(inside) >= 6 and len(inside) == 8, result["classes"]


@pytest.mark.parametrize("command", ["sample-design", "assess"])
def test_cli_help(command):
    from typer.testing import CliRunner

    from lcstack.cli import app

    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0 and "--map" in res.output and "--level" in res.output


def test_cli_bad_reference_and_level(demo_area, two_tiles, tmp_path):
    from typer.testing import CliRunner

    from lcstack.cli import app

    maps, _, _ = two_tiles
    runner = CliRunner()
    s = draw_sample(maps, {1: 3, 2: 3}, seed=0)
    ref = tmp_path / "ref.csv"
    ref.write_text(
        "latitude;longitude;category\n"
        + "".join(
            f"{la:.8f};{lo:.8f};{c}\n"
            for la, lo, c in zip(s.latitude, s.longitude, ["forest", "Forrest"] * 3, strict=True)
        )
    )
    base = ["assess", str(demo_area.config), "--reference", str(ref), "--map", maps[0], "--map", maps[1]]
    res = runner.invoke(app, [*base, "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "ref.csv" in res.output and "category 'Forrest' on line(s) 3, 5, 7" in res.output
    assert "did you mean 'forest'" in res.output
    res = runner.invoke(app, [*base, "--level", "3", "-q"])
    assert res.exit_code == 2 and "--level 3" in res.output
    res = runner.invoke(
        app, ["sample-design", str(demo_area.config), "--n", "10", "--map", str(tmp_path / "nope.tif")]
    )
    assert res.exit_code == 2 and "nope.tif" in res.output and "Traceback" not in res.output
    assert not list(tmp_path.glob("*.csv.tmp*"))


def test_maps_and_report_on_s3(two_tiles, tmp_path):
    """Maps read from S3 (moto server) through Storage's credentials; the report written back there."""
    from s3_server import s3_endpoint

    maps, a, b = two_tiles
    with s3_endpoint() as s3:
        bucket = s3.create_bucket()
        try:
            storage = Storage(f"s3://{bucket}", storage_options=s3.storage_options())
            urls = [f"s3://{bucket}/maps/{i}/level1.tif" for i in range(2)]
            for src, url in zip(maps, urls, strict=True):
                storage.put_file(src, url)
            assert map_strata(urls, storage=storage) == map_strata(maps)
            s = draw_sample(urls, {1: 5, 2: 5, 3: 5}, seed=2, storage=storage)
            assert s.equals(draw_sample(maps, {1: 5, 2: 5, 3: 5}, seed=2))
            assert (map_values(urls, s.longitude, s.latitude, storage=storage) == s.map_class).all()
            ref = s.assign(reference=s.map_class, line=np.arange(2, 17))
            result = assess(urls, ref, {"crop": 1, "forest": 2, "water": 3}, storage=storage)
            assert result["overall_accuracy"]["estimate"] == pytest.approx(1.0)
            out = write_assessment(result, f"s3://{bucket}/assessment", storage=storage)
            assert json.loads(storage.read_bytes(out["json"]))["maps"] == urls
        finally:
            s3.cleanup()
