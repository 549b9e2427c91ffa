"""Helpers shared by the benchmark scripts: machine facts, RESULTS.md section updates, LandCoverPy's predictor."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    """The CPU's name, with its family / model numbers and L2 size (VMs often report a generic name)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    name = fields.get("model name", "unknown")
    extra = [f"family {fields['cpu family']} model {fields['model']}"] if "model" in fields else []
    try:
        l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        extra.append(f"L2 {l2} per core")
    except OSError:
        pass
    return f"{name} ({', '.join(extra)})" if extra else name


#: CPU flags that decide which kernel variant runs (printed by :func:`cpu_family`).
KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vbmi2")


def cpu_family() -> str:
    """Vendor, family / model numbers, model name, the kernel-relevant flags and the L2 size of this CPU."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown CPU"
    flags = set(fields.get("flags", "").split())
    have = [f for f in KERNEL_FLAGS if f in flags]
    try:
        l2 = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
    except OSError:
        l2 = "?"
    return (
        f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
        f"({fields.get('model name', '?')}); flags: {' '.join(have) or 'none of ' + ' '.join(KERNEL_FLAGS)}; "
        f"L2 {l2} per core"
    )


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is below ``max_load``; return it."""
    deadline = time.monotonic() + max_wait_s
    load = load1()
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(10)
        load = load1()
    return load


def machine_line(load_before: float, load_after: float) -> str:
    return (
        f"Machine: {os.cpu_count()} cores (nproc), CPU {cpu_model()}; 1-min load average "
        f"{load_before:.2f} before / {load_after:.2f} after the measurement "
        f"({'quiet' if max(load_before, load_after) < 1.5 else 'BUSY: shared machine, figures pessimistic'})."
    )


def write_section(header: str, body: str) -> None:
    """Replace (or append) the ``header`` section of RESULTS.md up to its first ``###`` subsection.

    Other sections, and the subsections other scripts write inside this one, are kept as they are.
    """
    text = RESULTS.read_text() if RESULTS.exists() else "# lcstack benchmark results\n"
    section = f"{header}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |^### |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def landcoverpy_window(
    window: np.ndarray, clf: Any, lc_mapping: dict[str, int], features: list[str]
) -> np.ndarray:
    """LandCoverPy's per-window level-1 prediction, as its classification code does it.

    A pandas DataFrame per window with one column per feature, ``predict`` of string labels, nodata rows
    set to "nodata", and the strings mapped to codes with one ``np.where`` per class. The reference
    every lcstack inference path is timed and checked against.
    """
    height, width = window.shape[1:]
    window_tile_df = pd.DataFrame({name: window[i].ravel() for i, name in enumerate(features)})
    nodata_rows = (~np.isfinite(window_tile_df)).any(axis=1)
    for column in features:
        window_tile_df[column] = window_tile_df.pop(column).replace([np.inf, -np.inf, -np.nan], 0)
    predictions = clf.predict(window_tile_df)
    predictions[nodata_rows] = "nodata"
    predictions = np.reshape(predictions, (1, height, width))
    encoded_predictions = np.zeros_like(predictions, dtype=np.uint8)
    for class_, value in lc_mapping.items():
        encoded_predictions = np.where(predictions == class_, value, encoded_predictions)
    return encoded_predictions[0]


def windows_of(cube: np.ndarray, step: int) -> list[tuple[slice, slice]]:
    """The ``(y, x)`` slices of ``step``-pixel windows over a ``(feature, y, x)`` cube, row by row."""
    ny, nx = cube.shape[1:]
    return [(slice(y, y + step), slice(x, x + step)) for y in range(0, ny, step) for x in range(0, nx, step)]
