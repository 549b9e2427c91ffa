"""lcstack.plot: class maps, probabilities, uncertainty, RGB, confusion and importance figures."""

from __future__ import annotations

import io
import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402

import lcstack  # noqa: E402,F401  (registers the accessor)
from lcstack import plot  # noqa: E402
from lcstack.classify import flag_attrs  # noqa: E402
from lcstack.errors import InvalidInputError  # noqa: E402
from lcstack.inputs import read_label_colors, read_lc_labels  # noqa: E402

LABELS = {"forest": 2, "water": 3, "cropland": 5}


def _map() -> xr.DataArray:
    rng = np.random.default_rng(0)
    values = rng.choice([0, 2, 3], size=(20, 30)).astype("uint8")  # cropland absent
    da = xr.DataArray(
        values, dims=("y", "x"), coords={"y": 4000.0 - 10 * np.arange(20), "x": 500.0 + 10 * np.arange(30)}
    )
    da.attrs.update(flag_attrs(LABELS, long_name="level-1"))
    return da.rename("level1")


def _png_size(fig) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return len(buf.getvalue())


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_class_map_uses_names_colours_and_legend_of_present_classes():
    ax = xr.Dataset({"level1": _map()}).landcover.plot(colors={"forest": "#1b7837"})
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["forest", "water"]  # from the CF flag attributes; cropland is not on the map
    image = ax.get_images()[0]
    rgba = image.cmap(image.norm(2))
    assert np.allclose(rgba, matplotlib.colors.to_rgba("#1b7837"))
    assert image.cmap(image.norm(0))[3] == 0  # nodata is transparent
    assert ax.get_images()[0].get_extent() == [495.0, 795.0, 3805.0, 4005.0]
    assert _png_size(ax.figure) > 0


def test_class_map_default_palette_matches_geotiff_colours():
    from lcstack.cog import default_colors

    ax = _map().landcover.plot(labels=LABELS)
    image = ax.get_images()[0]
    expected = np.array(default_colors(LABELS)[3]) / 255
    assert np.allclose(image.cmap(image.norm(3)), expected)


def test_class_map_refuses_bad_input():
    with pytest.raises(InvalidInputError, match="2-D"):
        plot.plot_map(_map().expand_dims(band=[1]))
    with pytest.raises(InvalidInputError, match="'shrub'.*not a label"):
        plot.plot_map(_map(), colors={"shrub": "red"})
    with pytest.raises(InvalidInputError, match="no map 'level2'"):
        xr.Dataset({"level1": _map()}).landcover.plot("level2")


def test_probability_and_uncertainty_figures():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3), size=(16, 24)).transpose(2, 0, 1)
    proba = xr.DataArray(p, dims=("class", "y", "x"), coords={"class": ["forest", "water", "cropland"]})
    fig = proba.landcover.plot_probability(col_wrap=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == ["forest", "water", "cropland"]
    assert all(ax.get_images()[0].get_clim() == (0, 1) for ax in fig.axes if ax.get_images())
    assert _png_size(fig) > 0

    unc = (1 - proba.max("class")).rename("uncertainty")
    unc.attrs["long_name"] = "1 - max probability"
    ax = unc.landcover.plot_uncertainty()
    assert ax.get_title() == "uncertainty"
    assert fig is not ax.figure and ax.figure.axes[-1].get_ylabel() == "1 - max probability"
    with pytest.raises(InvalidInputError, match=r"\(class, y, x\)"):
        plot.plot_probability(unc)
    with pytest.raises(InvalidInputError, match="2-D"):
        plot.plot_uncertainty(proba)


def test_rgb_stretch_percentiles_and_errors():
    bands = np.stack([np.linspace(0, 1, 100).reshape(10, 10) * k for k in (1, 2, 3)])
    bands[0, 0, 0] = np.nan
    comp = xr.DataArray(bands, dims=("band", "y", "x"), coords={"band": ["red", "green", "blue"]})
    out = plot.rgb_stretch(comp, percentiles=(0, 100))
    assert out.shape == (10, 10, 3) and out.dtype == np.float32
    assert out[0, 0, 0] == 0 and out.max() == pytest.approx(1.0) and out.min() == 0
    assert np.allclose(out[..., 2], np.clip(bands[2] / 3, 0, 1))
    ds = comp.to_dataset("band")
    assert np.allclose(plot.rgb_stretch(ds), plot.rgb_stretch(comp))
    ax = xr.Dataset({"composite": comp.expand_dims(season=["summer"])}).landcover.plot_rgb(title="t")
    assert ax.get_images()[0].get_array().shape == (10, 10, 3)
    with pytest.raises(InvalidInputError, match=r"no band\(s\) \['nir'\]"):
        plot.rgb_stretch(comp, bands=("nir", "red", "green"))
    with pytest.raises(InvalidInputError, match="select one season"):
        plot.rgb_stretch(comp.expand_dims(season=["a"]))


def test_confusion_png_and_axes_are_one_implementation(tmp_path):
    from lcstack.evaluate import evaluate, plot_confusion

    assert plot_confusion is plot.plot_confusion
    report = evaluate([1, 1, 2, 2], [1, 2, 2, 2], labels={"a": 1, "b": 2})
    path = tmp_path / "cm.png"
    assert plot_confusion(report, path) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = plot_confusion(report)
    assert [t.get_text() for t in ax.texts] == ["1", "1", "0", "2"]
    assert ax.get_title() == f"OA {report['overall_accuracy']:.3f}, kappa {report['kappa']:.3f}"


def test_importance_bars_largest_first():
    ax = plot.plot_importance({"ndvi": 0.5, "red": 0.1, "nir": 0.3, "elev": 0.05}, top=3)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["red", "nir", "ndvi"]  # bottom to top
    with pytest.raises(InvalidInputError, match="no importances"):
        plot.plot_importance({})


def test_labels_with_colours_are_read_beside_plain_codes(tmp_path):
    path = tmp_path / "lc_labels.json"
    path.write_text(json.dumps({"forest": {"code": 2, "color": "#1b7837"}, "water": 3}, indent=1))
    assert read_lc_labels(path) == {"forest": 2, "water": 3}
    assert read_label_colors(path) == {"forest": "#1b7837"}
    ax = plot.plot_map(_map(), labels=read_lc_labels(path), colors=read_label_colors(path))
    assert ax.get_legend() is not None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"code": 2, "color": "green-ish"}, r"line 3, key 'forest': color 'green-ish' is not a hex colour"),
        ({"code": 2, "colour": "#00ff00"}, r"line 3, key 'forest': unknown member\(s\) \['colour'\]"),
        ({"color": "#00ff00"}, r"line 3, key 'forest': no `code`"),
        ({"code": 0, "color": "#00ff00"}, r"line 3, key 'forest': code 0 is not allowed"),
    ],
)
def test_bad_label_entries_name_file_line_and_key(tmp_path, entry, message):
    path = tmp_path / "lc_labels.json"
    path.write_text(json.dumps({"water": 3, "forest": entry}, indent=1))
    with pytest.raises(InvalidInputError, match=message) as err:
        read_lc_labels(path)
    assert str(path) in str(err.value)
    if "code 0" not in message:
        with pytest.raises(InvalidInputError, match=message):
            read_label_colors(path)
