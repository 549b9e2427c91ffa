"""Command-line interface: ``lcstack run config.yaml`` and friends.

Only the CLI configures logging and talks to the terminal. Errors lcstack raises on purpose are printed
as one clear message without a traceback, with exit status 2.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import LcstackError

app = typer.Typer(
    name="lcstack",
    help="Sentinel-2 land cover maps at any scale: STAC discovery, seasonal composites in Zarr, "
    "hierarchical classification with Dask.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

logger = logging.getLogger("lcstack")
F = TypeVar("F", bound=Callable[..., Any])

ConfigArg = Annotated[Path, typer.Argument(help="Run configuration (YAML).", show_default=False)]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask scheduler address (tcp://...), 'gateway://HOST:PORT' for Dask Gateway, 'threads' for the "
        "local threaded scheduler, or 'local' for a LocalCluster (default; env DASK_CLUSTER_IP).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings and errors only.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("lcstack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    pyw = logging.getLogger("py.warnings")
    pyw.handlers[:] = [handler]


def _bars(quiet: bool) -> bool:
    from .progress import progress_enabled

    return progress_enabled(not quiet)


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Print lcstack errors as one message (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LcstackError as err:
            _fail(str(err))
        except KeyboardInterrupt:
            _fail("interrupted; re-run the same command to resume (finished outputs are reused).", 130)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _dask(scheduler: str | None, config: Any = None, *, quiet: bool = False) -> Iterator[Any]:
    from .cluster import open_cluster
    from .settings import get_settings

    address = (
        scheduler or (config.dask.scheduler if config is not None else None) or get_settings().dask_scheduler
    )
    dask_cfg = config.dask if config is not None else None
    with open_cluster(address, config=dask_cfg) as client:
        if client is not None and getattr(client, "dashboard_link", None):
            typer.echo(f"Dask dashboard: {client.dashboard_link}", err=True)
        yield client


def _workflow(config: Path, quiet: bool) -> Any:
    from .config import load_config
    from .pipeline import Workflow

    return Workflow(load_config(config), progress=not quiet)


def _report(results: list[Any]) -> None:
    for r in results:
        what = r.details.get("tile", "") + (f" {r.details['season']}" if "season" in r.details else "")
        typer.echo(f"{r.step:10s} {'reused ' if r.reused else 'written'}  {what.strip() or r.key}  {r.url}")


@app.command("demo-data")
@handle_errors
def demo_data(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the synthetic area into.")],
    size: Annotated[int, typer.Option(help="Pixels per side at 10 m (256..10980).")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    flavour: Annotated[str, typer.Option(help="'l2a' (with SCL) or 'l1c' (with cirrus, no SCL).")] = "l2a",
    dem: Annotated[bool, typer.Option("--dem/--no-dem", help="Write a DEM collection too.")] = True,
    tiles: Annotated[
        int, typer.Option(help="Sentinel-2 tiles (1..4); 2 or more lie in two UTM zones around 0 deg E.")
    ] = 1,
    difficulty: Annotated[
        str, typer.Option(help="'normal', or 'hard' (confusable classes, label noise, rare classes, clouds).")
    ] = "normal",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write an offline synthetic Sentinel-2 area: STAC catalog of COGs, points, seasons, labels, config."""
    from .demo import make_demo_area

    _setup_logging(quiet, verbose)
    if flavour not in ("l2a", "l1c"):
        _fail(f"--flavour {flavour!r}: use 'l2a' or 'l1c'.")
    area = make_demo_area(
        out_dir,
        size=size,
        seed=seed,
        flavour=flavour,  # type: ignore[arg-type]
        with_dem=dem,
        progress=_bars(quiet),
        tiles=tiles,
        **({"difficulty": difficulty} if difficulty != "normal" else {}),  # type: ignore[arg-type]
    )
    typer.echo(f"demo area written to {area.root} (tiles {', '.join(area.tiles)})\nconfig: {area.config}")


@app.command()
@handle_errors
def discover(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scenes as JSON.")] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Find the scenes of every tile and season (STAC API or static catalog) and record the plan.

    ``--json`` prints ``{tile: {season: [scene, ...]}}`` (tile ``*`` on a user grid).
    """
    _setup_logging(quiet, verbose)
    with _workflow(config, quiet) as wf:
        scenes = wf.discover()
        wf.composite_plan()  # recorded in the registry: status and clean read it offline
    if as_json:
        rows = {
            tile: {
                s: [
                    {
                        "id": i.item.id,
                        "datetime": str(i.item.datetime),
                        "cloud_cover": i.cloud_cover,
                        "valid_fraction": round(i.valid_fraction, 4),
                    }
                    for i in infos
                ]
                for s, infos in seasons.items()
            }
            for tile, seasons in scenes.items()
        }
        typer.echo(json.dumps(rows, indent=2))
        return
    for tile, seasons in scenes.items():
        for season, infos in seasons.items():
            typer.echo(f"{'' if tile == '*' else f'tile {tile}, '}{season}: {len(infos)} scene(s)")
            for i in infos:
                typer.echo(
                    f"  {i.item.id}  {i.item.datetime:%Y-%m-%d}  "
                    f"cloud {i.cloud_cover:5.1f}%  valid {i.valid_fraction:.2f}"
                )


def _step_command(steps: tuple[str, ...]) -> Callable[..., None]:
    def command(
        config: ConfigArg,
        scheduler: SchedulerOpt = None,
        quiet: QuietOpt = False,
        verbose: VerboseOpt = False,
    ) -> None:
        from .config import load_config

        _setup_logging(quiet, verbose)
        cfg = load_config(config)
        with _workflow(config, quiet) as wf, _dask(scheduler, cfg, quiet=quiet):
            _report(wf.run(steps))

    return command


def _register(name: str, steps: tuple[str, ...], doc: str) -> None:
    cmd = _step_command(steps)
    cmd.__doc__ = doc
    cmd.__name__ = name
    app.command(name)(handle_errors(cmd))


_register("composite", ("discover", "composite"), "Discover scenes and write seasonal composites (Zarr).")
_register("train", ("discover", "composite", "train"), "Extract samples and train the hierarchical model.")
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Classify with a model trained elsewhere: its artefact folder (path or URL) or its key in the "
        "registry (`lcstack models CONFIG`); no training, no points needed. Composites are made as needed.",
    ),
]


@app.command("classify")
@handle_errors
def classify_command(
    config: ConfigArg,
    model: ModelOpt = None,
    scheduler: SchedulerOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Classify the area with the trained model, or with --model one trained elsewhere (COG + Zarr maps)."""
    _setup_logging(quiet, verbose)
    with _workflow(config, quiet) as wf:
        if model is not None:
            wf.use_model(model)
        steps = ("discover", "classify") if model is None else ("discover", "composite", "classify")
        with _dask(scheduler, wf.config, quiet=quiet):
            _report(wf.run(steps))


@app.command("models")
@handle_errors
def models_command(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the models as JSON.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the registry's models: key, creation time, estimator, features, classes and metrics."""
    _setup_logging(True, verbose)
    with _workflow(config, True) as wf:
        rows = wf.models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no complete model in the registry of {config}; `lcstack train {config}` makes one")
    for m in rows:
        l1 = m["metrics"].get("level1", {})
        scores = ", ".join(f"{k} {v:.3f}" for k, v in l1.items() if v is not None)
        typer.echo(f"{m['key']}  {m['created_at']}  {m['estimator']}  {m['n_samples']} samples  {m['url']}")
        typer.echo(f"  level-1 held-out: {scores}")
        typer.echo(f"  classes: {', '.join(m['classes']['level1'])}")
        typer.echo(f"  features ({len(m['features'])}): {', '.join(m['features'])}")


_register(
    "run",
    ("discover", "composite", "train", "classify"),
    "Run the whole workflow: discover → composite → train → classify.",
)


@app.command()
@handle_errors
def demo(
    storage: Annotated[
        Path,
        typer.Option(
            help="Folder for the demo area (config.yaml, stac/, ...) and its outputs (lcstack-data/)."
        ),
    ] = Path("lcstack-demo"),
    size: Annotated[int, typer.Option(help="Pixels per side at 10 m (256..10980).")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic area.")] = 0,
    tiles: Annotated[
        int, typer.Option(help="Sentinel-2 tiles (1..4); 2 or more lie in two UTM zones around 0 deg E.")
    ] = 1,
    scheduler: SchedulerOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate the offline demo area and run the whole workflow on it; report accuracy against truth."""
    from .config import load_config
    from .demo import make_demo_area
    from .demo.scoring import score_tiles

    _setup_logging(quiet, verbose)
    area = make_demo_area(storage, size=size, seed=seed, progress=_bars(quiet), tiles=tiles)
    cfg = load_config(area.config)
    from .pipeline import Workflow

    with Workflow(cfg, progress=not quiet) as wf, _dask(scheduler, cfg, quiet=quiet):
        results = wf.run()
        _report(results)
        per_tile = score_tiles(area, wf)
        maps = [wf.map_urls(r).get("level1", "") for r in wf.registry.find("maps", model=wf.model_key())]
    for tile, scores in per_tile.items():
        typer.echo(
            f"tile {tile}: level-1 overall accuracy vs truth: {scores['level1']:.4f}; "
            f"level-2: {scores['level2']:.4f}"
        )
    typer.echo(f"maps: {', '.join(maps)}")
    typer.echo(f"re-run or continue with: lcstack run {area.config}")


@app.command()
@handle_errors
def status(config: ConfigArg, verbose: VerboseOpt = False) -> None:
    """List which outputs of a config are done and which are pending (from the registry, offline)."""
    _setup_logging(True, verbose)
    with _workflow(config, True) as wf:
        st = wf.status()
    if not st:
        typer.echo(
            f"nothing recorded for {config} yet: `lcstack discover {config}` or `lcstack run` plans it"
        )
    for kind, rows in st.items():
        done = sum(r["done"] for r in rows)
        typer.echo(f"{kind}: {done}/{len(rows)} done")
        for r in rows:
            label = " ".join(str(r[k]) for k in ("tile", "season") if r.get(k)) or r["key"]
            typer.echo(f"  {'done   ' if r['done'] else 'pending'} {label}")


@app.command()
@handle_errors
def clean(
    config: ConfigArg,
    what: Annotated[str, typer.Option(help="composites, maps or all.")] = "maps",
    verbose: VerboseOpt = False,
) -> None:
    """Remove outputs of a config together with their registry records."""
    _setup_logging(False, verbose)
    if what not in ("composites", "maps", "all"):
        _fail(f"--what {what!r}: use composites, maps or all.")
    with _workflow(config, True) as wf:
        n = wf.clean(what)
    typer.echo(f"removed {n} output(s)")


LevelOpt = Annotated[int, typer.Option(help="Map level: 1 (lc_labels.json) or 2 (sl_labels.json).")]
MapOpt = Annotated[
    list[str] | None,
    typer.Option("--map", help="Class-map GeoTIFF (repeat for several tiles); default: the config's maps."),
]


def _assess_inputs(config: Path, level: int, maps: list[str] | None) -> tuple[Any, list[str], Any, str]:
    from .assess import level_labels, workflow_maps

    wf = _workflow(config, True)
    with wf:
        labels, labels_file = level_labels(wf.config, level)
        return wf, list(maps) if maps else workflow_maps(wf, level=level), labels, labels_file


@app.command("sample-design")
@handle_errors
def sample_design(
    config: ConfigArg,
    n: Annotated[
        int | None, typer.Option("--n", help="Sample size; default: Olofsson et al. (2014) Eq. 13.")
    ] = None,
    out: Annotated[str | None, typer.Option(help="Points file to write; default: stdout.")] = None,
    level: LevelOpt = 1,
    seed: Annotated[int, typer.Option(help="Seed of the random draw.")] = 0,
    min_per_class: Annotated[int, typer.Option(help="Minimum sample units per map class.")] = 50,
    target_se: Annotated[float, typer.Option(help="Target standard error of overall accuracy.")] = 0.01,
    expected_ua: Annotated[
        list[str] | None,
        typer.Option(help="Expected user's accuracy for the size formula: 0.8 (all) or NAME=0.7; repeat."),
    ] = None,
    map_: MapOpt = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Draw a stratified random validation sample from the map (strata = map classes)."""
    from .assess import design_sample, sample_csv
    from .store import Storage

    _setup_logging(quiet, verbose)
    wf, maps, labels, _ = _assess_inputs(config, level, map_)
    sample, design = design_sample(
        maps,
        labels,
        n=n,
        target_se=target_se,
        expected_ua=expected_ua or (),
        min_per_class=min_per_class,
        seed=seed,
        storage=wf.storage,
        progress=not quiet,
    )
    text = sample_csv(sample)
    if out is None:
        typer.echo(text, nl=False)
    else:
        Storage(".", storage_options=wf.storage.storage_options).write_bytes(out, text.encode())
    for name, c in design["classes"].items():
        typer.echo(f"{name:24s} {c['pixels']:>12d} px  weight {c['weight']:.4f}  n = {c['n']}", err=True)
    typer.echo(f"{design['n']} sample units" + (f" written to {out}" if out else ""), err=True)


# --- outputs: mosaic and STAC catalog (lcstack.mosaic, lcstack.stac_out) -------------------------------
@app.command()
@handle_errors
def mosaic(
    config: ConfigArg,
    crs: Annotated[str, typer.Option("--crs", help="Target CRS of the mosaic COG.")] = "EPSG:4326",
    resolution: Annotated[
        float | None,
        typer.Option(
            "--resolution", help="Pixel size in CRS units (default: the tiles', in degrees for lon/lat)."
        ),
    ] = None,
    level: Annotated[int, typer.Option("--level", help="1 (category) or 2 (subcategory).")] = 1,
    verbose: VerboseOpt = False,
) -> None:
    """Write a VRT per UTM zone of the tile maps and one COG mosaic over the whole area."""
    from .mosaic import mosaic_workflow

    _setup_logging(True, verbose)
    with _workflow(config, True) as wf:
        out = mosaic_workflow(wf, level=level, crs=crs, resolution=resolution)
    for zone, url in out["vrts"].items():
        typer.echo(f"vrt     {zone}  {url}")
    typer.echo(f"mosaic  {out['tiles']} tile(s)  {out['mosaic']}")


@app.command()
@handle_errors
def assess(
    config: ConfigArg,
    reference: Annotated[Path, typer.Option(help="Filled-in validation sample (points file).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates as JSON.")] = False,
    level: LevelOpt = 1,
    map_: MapOpt = None,
    out: Annotated[
        str | None, typer.Option(help="Folder for assessment.json, report.md, confusion.png.")
    ] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Accuracy and area estimates with 95 % intervals from reference points (Olofsson et al. 2014)."""
    import hashlib

    from . import assess as lca

    _setup_logging(quiet, verbose)
    wf, maps, labels, labels_file = _assess_inputs(config, level, map_)
    ref = lca.read_reference(reference, labels, labels_file=labels_file)
    result = lca.assess(maps, ref, labels, source=str(reference), storage=wf.storage, progress=not quiet)
    digest = hashlib.sha256(json.dumps([maps, reference.read_text()]).encode()).hexdigest()[:8]
    where = out or wf.storage.url(
        "classification-maps", "assessments", f"{reference.stem}_level{level}_{digest}"
    )
    result["outputs"] = lca.write_assessment(result, where, storage=wf.storage)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    oa = result["overall_accuracy"]
    typer.echo(
        f"overall accuracy {oa['estimate']:.3f} ± {oa['ci95']:.3f} (95 %), {result['n_samples']} samples"
    )
    for name, c in result["classes"].items():
        a = c["area_ha"]
        typer.echo(f"  {name:24s} area {a['estimate']:12.1f} ± {a['ci95']:.1f} ha")
    typer.echo(f"report: {result['outputs']['report']}")


@app.command()
@handle_errors
def stac(config: ConfigArg, verbose: VerboseOpt = False) -> None:
    """Write a static STAC collection of the run's outputs under <storage>/stac/collection.json."""
    from .stac_out import outputs_from_workflow, write_outputs_collection

    _setup_logging(True, verbose)
    with _workflow(config, True) as wf:
        url = write_outputs_collection(wf.storage, outputs_from_workflow(wf))
    typer.echo(url)


# --- end of outputs commands ----------------------------------------------------------------------------


def main() -> None:
    """Entry point."""
    app()
