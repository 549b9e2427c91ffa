"""The ``.landcover`` accessor: thin, stateless shims over lcstack's public functions.

A fitted model never lives on the accessor (xarray makes a new accessor object for every derived
object); pass it, or the path of a model artefact, to :meth:`LandcoverAccessor.classify`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .errors import InvalidInputError
from .harmonize import SCL_CLOUD_CLASSES

__all__ = ["LandcoverAccessor", "LandcoverArrayAccessor"]


def _features_of(ds: xr.Dataset) -> xr.DataArray:
    from .features import stack_features

    if "features" in ds:
        return ds["features"]
    if "composite" in ds:
        seasons = [str(s) for s in np.atleast_1d(ds["season"].values)]
        per = {s: ds.sel(season=[s]) for s in seasons}
        terrain = ds[["terrain"]] if "terrain" in ds else None
        return stack_features(per, terrain)
    raise InvalidInputError(
        "this Dataset has neither a `features` nor a `composite` variable; open the composites with "
        "lcstack (Workflow.features) or build the cube with lcstack.features.stack_features."
    )


def _predict_proba(features: xr.DataArray, model: Any, kwargs: dict[str, Any]) -> xr.DataArray:
    from .classify import classify

    return classify(features, model, probabilities=True, **kwargs)["level1_proba"]


def _uncertainty(obj: Any, model_or_proba: Any, kwargs: dict[str, Any]) -> xr.Dataset:
    from .classify import UNCERTAINTY_LAYERS, classify, proba_uncertainty

    if isinstance(model_or_proba, xr.DataArray) and "class" in model_or_proba.dims:
        return proba_uncertainty(model_or_proba)
    features = obj if isinstance(obj, xr.DataArray) else _features_of(obj)
    return classify(features, model_or_proba, probabilities=True, **kwargs)[list(UNCERTAINTY_LAYERS)]


@xr.register_dataset_accessor("landcover")
class LandcoverAccessor:
    """``ds.landcover``: spectral indices, seasonal composites and classification of a Dataset."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def indices(self, names: Sequence[str] | None = None) -> xr.Dataset:
        """Spectral indices of a Dataset of reflectance bands (``red``, ``nir``, ...)."""
        from .indices import compute_indices

        return compute_indices(self._ds, names)

    def composite(
        self,
        seasons: Mapping[str, Any],
        *,
        mask_classes: Sequence[int] = SCL_CLOUD_CLASSES,
        dilation_m: float = 0.0,
        indices: Sequence[str] | None = None,
        features: Any = None,
    ) -> xr.Dataset:
        """Composite per season of a ``time`` series of reflectance bands (and ``scl``).

        ``seasons`` maps names to :class:`lcstack.inputs.Season` objects (or anything with ``start``
        and ``end`` dates). Each season goes through :func:`lcstack.composite.composite_season`, what the
        workflow runs after loading the scenes (``features``: a :class:`lcstack.config.FeaturesConfig`).
        Returns the lcstack composite layout (``composite`` with dims ``season, band, y, x`` and
        ``valid_count``); lazy when the input is.
        """
        from .composite import cloud_mask, composite_season
        from .indices import DEFAULT_INDICES

        ds = self._ds
        if "time" not in ds.dims:
            raise InvalidInputError("composite() needs a Dataset with a `time` dimension of scenes.")
        out = []
        for name, season in seasons.items():
            start, end = (
                np.datetime64(str(season.start)),
                np.datetime64(str(season.end)) + np.timedelta64(1, "D"),
            )
            sub = ds.sel(time=(ds.time >= start) & (ds.time < end))
            if sub.sizes["time"] == 0:
                raise InvalidInputError(f"season {name!r}: no scene between {season.start} and {season.end}.")
            invalid = None
            if "scl" in sub:
                res = abs(float(sub.x[1] - sub.x[0])) if sub.sizes.get("x", 0) > 1 else 10.0
                invalid = cloud_mask(sub["scl"], classes=mask_classes, dilation_m=dilation_m, resolution=res)
                sub = sub.drop_vars("scl")
            names = list(indices) if indices is not None else list(DEFAULT_INDICES)
            out.append(composite_season(sub, invalid, season=name, indices=names, features=features))
        return xr.concat(out, dim="season")

    def classify(self, model: Any, **kwargs: Any) -> xr.Dataset:
        """Level-1 and level-2 class maps (lazy ``level1``/``level2`` uint8) from a model or artefact path."""
        from .classify import classify

        return classify(_features_of(self._ds), model, **kwargs)

    def predict_proba(self, model: Any, **kwargs: Any) -> xr.DataArray:
        """Level-1 class probabilities ``(class, y, x)``, uint8 whole percent (lazy; ``classify``'s layer)."""
        return _predict_proba(_features_of(self._ds), model, kwargs)

    def uncertainty(self, model_or_proba: Any, **kwargs: Any) -> xr.Dataset:
        """Uncertainty layers (lazy, uint8 percent) from a model, or from probabilities ``(class, y, x)``.

        With a model (or artefact path): ``classify``'s ``level1_confidence``, ``level1_margin``,
        ``level1_entropy`` and their level-2 equivalents, from the same prediction. With probabilities:
        :func:`lcstack.classify.proba_uncertainty` (level 1 only).
        """
        return _uncertainty(self._ds, model_or_proba, kwargs)

    def plot(self, level: str = "level1", **kwargs: Any) -> Any:
        """Draw the class map ``level`` with names, colours and a legend (:func:`lcstack.plot.plot_map`)."""
        from .plot import plot_map

        if level not in self._ds:
            raise InvalidInputError(f"no map {level!r} in this Dataset; it has {list(self._ds.data_vars)}.")
        return plot_map(self._ds[level], **kwargs)

    def plot_rgb(self, **kwargs: Any) -> Any:
        """Draw a composite in true colour with a percentile stretch (:func:`lcstack.plot.plot_rgb`).

        A Dataset with a ``composite`` variable draws its first season; otherwise its band variables.
        """
        from .plot import plot_rgb

        ds = self._ds
        if "composite" in ds:
            comp = ds["composite"]
            return plot_rgb(comp.isel(season=0) if "season" in comp.dims else comp, **kwargs)
        return plot_rgb(ds, **kwargs)


@xr.register_dataarray_accessor("landcover")
class LandcoverArrayAccessor:
    """``features.landcover``: classification of a ``(feature, y, x)`` cube."""

    def __init__(self, da: xr.DataArray) -> None:
        self._da = da

    def classify(self, model: Any, **kwargs: Any) -> xr.Dataset:
        """Level-1 and level-2 class maps (lazy) from a model or a model artefact path."""
        from .classify import classify

        if "feature" not in self._da.dims:
            raise InvalidInputError("classify() needs a DataArray with a `feature` dimension.")
        return classify(self._da, model, **kwargs)

    def predict_proba(self, model: Any, **kwargs: Any) -> xr.DataArray:
        """Level-1 class probabilities ``(class, y, x)`` of this feature cube (uint8 whole percent, lazy)."""
        if "feature" not in self._da.dims:
            raise InvalidInputError("predict_proba() needs a DataArray with a `feature` dimension.")
        return _predict_proba(self._da, model, kwargs)

    def uncertainty(self, model: Any = None, **kwargs: Any) -> xr.Dataset:
        """Uncertainty layers of this cube with ``model``, or of these ``(class, y, x)`` probabilities."""
        if model is None:
            from .classify import proba_uncertainty

            return proba_uncertainty(self._da)
        if "feature" not in self._da.dims:
            raise InvalidInputError("uncertainty(model) needs a DataArray with a `feature` dimension.")
        return _uncertainty(self._da, model, kwargs)

    def plot(self, **kwargs: Any) -> Any:
        """Draw this class map with class names, colours and a legend (:func:`lcstack.plot.plot_map`)."""
        from .plot import plot_map

        return plot_map(self._da, **kwargs)

    def plot_probability(self, **kwargs: Any) -> Any:
        """Draw ``(class, y, x)`` probabilities, a panel per class (:func:`lcstack.plot.plot_probability`)."""
        from .plot import plot_probability

        return plot_probability(self._da, **kwargs)

    def plot_uncertainty(self, **kwargs: Any) -> Any:
        """Draw a 2-D uncertainty layer with a colour bar (:func:`lcstack.plot.plot_uncertainty`)."""
        from .plot import plot_uncertainty

        return plot_uncertainty(self._da, **kwargs)
