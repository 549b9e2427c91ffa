"""Figures of lcstack's outputs: class maps, probabilities, uncertainty, RGB composites, accuracy.

matplotlib is imported only when a function here is called. Every function draws on the ``ax`` (or
``fig``) it is given, or on a new pyplot figure (so that notebooks show it), and returns what it drew
on; :func:`plot_confusion` can instead write a PNG without pyplot (for workers and reports).

Class colours come from :func:`class_colors`: the colours of a labels file
(``{"forest": {"code": 2, "color": "#1b7837"}}``, :func:`lcstack.inputs.read_label_colors`) where given,
lcstack's default palette (:func:`lcstack.cog.default_colors`, the one embedded in the GeoTIFFs) otherwise.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np

from .errors import InvalidInputError

__all__ = [
    "class_colors",
    "map_labels",
    "plot_confusion",
    "plot_importance",
    "plot_map",
    "plot_probability",
    "plot_rgb",
    "plot_uncertainty",
    "rgb_stretch",
]


def _axes(ax: Any = None, figsize: tuple[float, float] = (7.0, 6.0)) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")[1]


def _extent(da: Any) -> list[float] | None:
    """``imshow`` extent of a DataArray with ``x``/``y`` coordinates (pixel edges), else ``None``."""
    if "x" not in da.coords or "y" not in da.coords or da.sizes["x"] < 2 or da.sizes["y"] < 2:
        return None
    x, y = da["x"].values, da["y"].values
    dx, dy = (x[1] - x[0]) / 2, (y[1] - y[0]) / 2
    return [x[0] - dx, x[-1] + dx, y[-1] + dy, y[0] - dy]


def class_colors(
    labels: Mapping[str, int], colors: Mapping[str, str] | None = None
) -> dict[int, tuple[float, float, float, float]]:
    """RGBA colours (0..1) per class code: ``colors`` where given, lcstack's default palette otherwise.

    Parameters
    ----------
    labels : mapping
        Class name -> code (as :func:`lcstack.inputs.read_lc_labels` returns).
    colors : mapping, optional
        Class name -> matplotlib colour (``"#1b7837"``, ``"tab:blue"``), e.g. from
        :func:`lcstack.inputs.read_label_colors`.

    Returns
    -------
    dict
        code -> ``(r, g, b, a)``; code 0 (nodata) is transparent.

    """
    from matplotlib.colors import to_rgba

    from .cog import default_colors

    table = {code: tuple(c / 255 for c in rgba) for code, rgba in default_colors(labels).items()}
    for name, color in (colors or {}).items():
        if name not in labels:
            raise InvalidInputError(
                f"colour given for {name!r}, which is not a label ({', '.join(sorted(labels))})."
            )
        try:
            table[int(labels[name])] = to_rgba(color)
        except ValueError:
            raise InvalidInputError(
                f"label {name!r}: {color!r} is not a colour; use '#rrggbb' or a matplotlib colour name."
            ) from None
    return table  # type: ignore[return-value]


def map_labels(da: Any) -> dict[str, int]:
    """Class name -> code of a class map from its CF ``flag_values`` / ``flag_meanings`` attributes.

    Parameters
    ----------
    da : xarray.DataArray
        A map written by lcstack (:func:`lcstack.classify.flag_attrs`); code 0 (nodata) is left out.

    Returns
    -------
    dict
        Class name -> code; empty when the map has no flag attributes.

    """
    values = np.atleast_1d(da.attrs.get("flag_values", []))
    meanings = str(da.attrs.get("flag_meanings", "")).split()
    if len(values) != len(meanings):
        return {}
    return {name: int(code) for name, code in zip(meanings, values, strict=True) if int(code) != 0}


def plot_map(
    da: Any,
    labels: Mapping[str, int] | None = None,
    *,
    colors: Mapping[str, str] | None = None,
    ax: Any = None,
    title: str | None = None,
    legend: bool = True,
) -> Any:
    """Draw a class map with one colour per class and a legend of the class names.

    Parameters
    ----------
    da : xarray.DataArray
        2-D ``(y, x)`` map of class codes (0 = nodata, drawn transparent); computed if lazy.
    labels : mapping, optional
        Class name -> code; by default from the map's CF flag attributes (:func:`map_labels`). Only classes
        present in the map are listed in the legend.
    colors : mapping, optional
        Class name -> colour, see :func:`class_colors`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure by default.
    title : str, optional
        Axes title; the DataArray's name by default.
    legend : bool
        Draw the legend (outside the axes, on the right).

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    if da.ndim != 2:
        raise InvalidInputError(f"plot_map needs a 2-D (y, x) class map; got dims {tuple(da.dims)}.")
    labels = dict(labels) if labels is not None else map_labels(da)
    values = np.asarray(da.values)
    if not labels:
        labels = {f"class {int(c)}": int(c) for c in np.unique(values) if c != 0}
    table = class_colors(labels, colors)
    n = max(table) + 1
    cmap = ListedColormap([table.get(code, (0, 0, 0, 0)) for code in range(n)])
    ax = _axes(ax)
    norm = BoundaryNorm(np.arange(-0.5, n), n)
    ax.imshow(values, cmap=cmap, norm=norm, interpolation="nearest", extent=_extent(da))
    if legend:
        present = set(np.unique(values).tolist())
        handles = [
            Patch(color=table[code], label=name)
            for name, code in sorted(labels.items(), key=lambda kv: kv[1])
            if code in present
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    ax.set_title(title if title is not None else str(da.name or "land cover"))
    return ax


def _check_proba(proba: Any) -> None:
    if proba.ndim != 3 or "class" not in proba.dims:
        raise InvalidInputError(
            "plot_probability needs a (class, y, x) DataArray of probabilities; "
            f"got dims {tuple(proba.dims)}."
        )


def plot_probability(
    proba: Any, *, classes: Sequence[Any] | None = None, col_wrap: int = 3, fig: Any = None
) -> Any:
    """Draw one panel of class probabilities (0..1) per class, with a shared colour bar.

    Parameters
    ----------
    proba : xarray.DataArray
        ``(class, y, x)`` probabilities; the ``class`` coordinate names the panels.
    classes : sequence, optional
        The ``class`` coordinate values to draw (all by default).
    col_wrap : int
        Panels per row.
    fig : matplotlib.figure.Figure, optional
        Figure to draw on; a new pyplot figure by default.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn on.

    """
    _check_proba(proba)
    if classes is not None:
        proba = proba.sel({"class": list(classes)})
    n = proba.sizes["class"]
    ncols = max(1, min(col_wrap, n))
    nrows = -(-n // ncols)
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(3.2 * ncols + 1, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        layer = proba.isel({"class": i})
        image = ax.imshow(np.asarray(layer.values), cmap="viridis", vmin=0, vmax=1, extent=_extent(layer))
        ax.set_title(str(proba["class"].values[i]) if "class" in proba.coords else f"class {i}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="probability")
    return fig


def plot_uncertainty(
    da: Any, *, ax: Any = None, cmap: str = "magma", title: str | None = None, label: str | None = None
) -> Any:
    """Draw a 2-D uncertainty layer (e.g. ``1 - max probability`` or entropy) with a colour bar.

    Parameters
    ----------
    da : xarray.DataArray
        ``(y, x)`` uncertainty; NaN (nodata) is left blank.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure by default.
    cmap : str
        Colour map.
    title : str, optional
        Axes title; the DataArray's name by default.
    label : str, optional
        Colour bar label; the ``long_name`` or ``units`` attribute by default.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    """
    if da.ndim != 2:
        raise InvalidInputError(f"plot_uncertainty needs a 2-D (y, x) layer; got dims {tuple(da.dims)}.")
    ax = _axes(ax)
    image = ax.imshow(np.asarray(da.values, dtype=float), cmap=cmap, extent=_extent(da))
    default_label = da.attrs.get("long_name") or da.attrs.get("units") or "uncertainty"
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label=label or default_label)
    ax.set_title(title if title is not None else str(da.name or "uncertainty"))
    return ax


def rgb_stretch(
    composite: Any,
    *,
    bands: Sequence[str] = ("red", "green", "blue"),
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> np.ndarray:
    """Stretch three bands between two percentiles into a ``(y, x, 3)`` RGB image in 0..1.

    Parameters
    ----------
    composite : xarray.DataArray or xarray.Dataset
        A ``(band, y, x)`` DataArray (one season of ``composite``), or a Dataset with one variable per band.
    bands : sequence of str
        The bands drawn as red, green and blue.
    percentiles : tuple of float
        Lower and upper percentile of all three bands together mapped to 0 and 1; NaN becomes 0.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(y, x, 3)``.

    """
    if hasattr(composite, "data_vars"):
        missing = [b for b in bands if b not in composite]
        if missing:
            raise InvalidInputError(f"rgb_stretch: no band(s) {missing} in {list(composite.data_vars)}.")
        stack = np.stack([np.asarray(composite[b].values, dtype=float) for b in bands], axis=-1)
    else:
        if "band" not in composite.dims or composite.ndim != 3:
            raise InvalidInputError(
                f"rgb_stretch needs a (band, y, x) DataArray; got dims {tuple(composite.dims)} "
                "(select one season first: composite.isel(season=0))."
            )
        have = [str(b) for b in composite["band"].values]
        missing = [b for b in bands if b not in have]
        if missing:
            raise InvalidInputError(f"rgb_stretch: no band(s) {missing} in {have}.")
        stack = np.asarray(composite.sel(band=list(bands)).transpose(..., "band").values, dtype=float)
    if not np.isfinite(stack).any():
        return np.zeros(stack.shape, dtype="float32")
    lo, hi = np.nanpercentile(stack, percentiles)
    out = np.clip((stack - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    return np.nan_to_num(out).astype("float32")


def plot_rgb(composite: Any, *, ax: Any = None, title: str | None = None, **stretch: Any) -> Any:
    """Draw an RGB composite with :func:`rgb_stretch` (keyword arguments go to it).

    Parameters
    ----------
    composite : xarray.DataArray or xarray.Dataset
        See :func:`rgb_stretch`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure by default.
    title : str, optional
        Axes title.
    **stretch
        ``bands`` and ``percentiles`` of :func:`rgb_stretch`.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    """
    image = rgb_stretch(composite, **stretch)
    ref = composite[next(iter(composite.data_vars))] if hasattr(composite, "data_vars") else composite
    ax = _axes(ax, figsize=(6.0, 6.0))
    ax.imshow(image, extent=_extent(ref))
    if title:
        ax.set_title(title)
    return ax


def plot_importance(importances: Any, *, top: int = 20, ax: Any = None, title: str | None = None) -> Any:
    """Horizontal bar chart of the ``top`` largest feature importances.

    Parameters
    ----------
    importances : mapping or pandas.Series
        Feature name -> importance.
    top : int
        Number of features drawn (largest first).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure by default.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    """
    items = sorted(dict(importances).items(), key=lambda kv: float(kv[1]), reverse=True)[:top]
    if not items:
        raise InvalidInputError("plot_importance: no importances to draw.")
    names = [str(k) for k, _ in items][::-1]
    values = [float(v) for _, v in items][::-1]
    ax = _axes(ax, figsize=(6.0, 0.3 * len(names) + 1.5))
    ax.barh(names, values, color="#4c72b0")
    ax.set_xlabel("importance")
    ax.set_title(title or f"top {len(names)} features")
    return ax


def _draw_confusion(ax: Any, cm: np.ndarray, share: np.ndarray, names: list[str], share_label: str) -> None:
    n = len(names)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label=share_label)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    ax.set_ylabel("Reference")
    for i in range(n):
        for j in range(n):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8, color=color)


def plot_confusion(
    report: Mapping[str, Any],
    path_or_file: str | os.PathLike[str] | IO[bytes] | None = None,
    *,
    title: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    share: Any = None,
    share_label: str = "share of reference class",
    xlabel: str = "Predicted",
    ax: Any = None,
) -> Any:
    """Draw the confusion matrix of an :func:`lcstack.evaluate.evaluate` report.

    Cells are coloured by the row-normalised share (recall per reference class) and annotated with counts.

    Parameters
    ----------
    report : dict
        Output of :func:`lcstack.evaluate.evaluate` (``confusion_matrix``, ``labels``,
        ``overall_accuracy``, ``kappa``).
    path_or_file : str, PathLike or binary file, optional
        Write a PNG there (local path, fsspec URL or writable binary file), drawn without pyplot;
        by default the matrix is drawn on ``ax`` or a new pyplot figure.
    title : str, optional
        Figure title; by default overall accuracy and kappa.
    storage_options : dict, optional
        fsspec options when ``path_or_file`` is a URL.
    share : array-like, optional
        Cell colours in [0, 1] (same shape as the matrix) instead of the row-normalised counts, e.g.
        estimated area proportions normalised per reference class (:mod:`lcstack.assess`).
    share_label : str
        Colour bar label.
    xlabel : str
        Label of the columns' axis.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on when no ``path_or_file`` is given.

    Returns
    -------
    matplotlib.axes.Axes or None
        The axes drawn on, or ``None`` when a PNG was written.

    """
    cm = np.asarray(report["confusion_matrix"], dtype=float)
    names = list(report["labels"])
    row_sums = cm.sum(axis=1, keepdims=True)
    if share is None:
        share = np.divide(cm, row_sums, out=np.zeros_like(cm), where=row_sums > 0)
    share = np.asarray(share, dtype=float)
    if share.shape != cm.shape:
        raise InvalidInputError(f"plot_confusion: share has shape {share.shape}, the matrix {cm.shape}.")
    size = max(4.0, 0.6 * len(names) + 2.5)
    fig = None
    if path_or_file is not None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(size, size), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        ax = _axes(ax, figsize=(size, size))
    _draw_confusion(ax, cm, share, names, share_label)
    ax.set_xlabel(xlabel)
    if title is None:
        kappa = report.get("kappa")
        title = f"OA {report['overall_accuracy']:.3f}" + (f", kappa {kappa:.3f}" if kappa is not None else "")
    ax.set_title(title)
    if fig is None:
        return ax
    _save_png(fig, path_or_file, storage_options)
    return None


def _save_png(fig: Any, path_or_file: Any, storage_options: Mapping[str, Any] | None) -> None:
    if hasattr(path_or_file, "write"):
        fig.savefig(path_or_file, format="png", dpi=120)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    from .store import Storage

    url = os.fspath(path_or_file)
    Storage.for_url(url, storage_options).write_bytes(url, buffer.getvalue())
