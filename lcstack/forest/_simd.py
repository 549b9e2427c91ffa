"""Vector partition steps (AVX-512, AVX2) for the tree kernels of :mod:`lcstack.forest`.

One call of :func:`partition16` (AVX-512) or :func:`partition8` (AVX2) does, for up to 16 or 8 rows at
once, what the scalar loop of ``_descend`` does for one: gather ``col[row]`` for the row indices
``src[i:i + width]``, compare with the split's threshold, and put the rows that go left at
``dst[nl:nl + n_left]`` and those that go right at ``dst[nr + 1 - n_right:nr + 1]``, each group in its
input order. It returns ``n_left``. The comparison is the scalar kernel's: a row goes right when ``x >
thr`` if NaN goes left (``nan_left``), else when ``not x <= thr``, so NaN follows scikit-learn's
``missing_go_to_left``.

* AVX-512 (:func:`partition16`, which takes the row count ``n``, 1 to 16, so a segment's last rows
  need no scalar loop): a masked load of the rows, ``vgatherdps``, then ``vpcompressd`` into a register
  and a masked store per side (the memory form of ``vpcompressd`` is microcoded on AMD Zen 4). It reads
  and writes nothing beyond its ``n`` rows and the two groups.
* AVX2 (:func:`partition8`): ``vgatherdps`` (8 lanes), then ``vpermd`` with a 256-entry table of lane
  orders (AVX2 has no compress) and a full 8-lane store per side: the left store starts at ``nl``, the
  right one ends at ``nr``. The lanes beyond each group land in the unwritten gap ``dst[nl + n_left:nr
  + 1 - n_right]``, so the caller must keep the gap at least 16 rows wide before the call (``hi - i >=
  16``): the two stores then never overlap, and the gap is filled by later steps.

LLVM cannot select the intrinsics of an instruction set the CPU lacks (it aborts the process), so each
intrinsic exists only where numba compiles for a host that has it. Everywhere else the name is bound to
its plain-numba stand-in (:func:`partition16_scalar`, :func:`partition8_scalar`: same contract, and the
tests' reference), which the kernels never call because :func:`lcstack.forest.simd_width` then says 0 or 8.

On the benchmark machine either step made the whole kernel faster than the scalar loop, the AVX2 one as
fast as the AVX-512 one (figures: ``benchmarks/RESULTS.md``).
``LCSTACK_SIMD`` picks the step at run time: unset or ``auto`` (the step measured fastest on this CPU,
:func:`lcstack.forest.calibrated_width`), ``avx512`` (the widest it has), ``avx2``, or ``0`` (the
scalar loop).

The kernels that call these steps are cached on disk with a stamp over this module's source too
(:data:`KERNEL_SOURCES`, :func:`jit`): editing it recompiles them.
"""

from __future__ import annotations

import functools
import os
import platform

import numpy as np

from lcstack.errors import InvalidInputError

__all__ = [
    "AVX2",
    "AVX512",
    "KERNEL_SOURCES",
    "available_widths",
    "jit",
    "partition8",
    "partition8_scalar",
    "partition16",
    "partition16_scalar",
    "requested_width",
]

try:
    import numba
except ImportError:  # pragma: no cover - numba is installed in the test environment
    numba = None

_HERE = os.path.dirname(os.path.abspath(__file__))
#: Every source file the forest kernels compile from: the on-disk cache of each kernel is stamped with a
#: hash of all of them (:mod:`lcstack.forest._cache`). A module whose functions a kernel calls or
#: inlines must be listed here.
KERNEL_SOURCES = tuple(os.path.join(_HERE, name) for name in ("kernels.py", "_simd.py", "_cache.py"))

if numba is not None:
    from lcstack.forest._cache import jit as _cached_jit

    #: ``numba.njit`` for the forest kernels, cached on disk with a stamp over :data:`KERNEL_SOURCES`.
    jit = functools.partial(_cached_jit, KERNEL_SOURCES)


def _host_features() -> dict[str, bool]:
    """Return the CPU features numba compiles for; none where it does not target this x86-64 host."""
    if numba is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    if numba.config.DISABLE_JIT:  # the kernels run as Python: no intrinsics
        return {}
    if numba.config.CPU_NAME not in (None, "", "host"):  # NUMBA_CPU_NAME=generic etc.: portable code
        return {}
    try:
        import llvmlite.binding as llvm

        return dict(llvm.get_host_cpu_features())
    except Exception:  # pragma: no cover - llvmlite cannot read the host's features
        return {}


_FEATURES = _host_features()
#: True where the AVX-512 step is compiled in (x86-64 with AVX-512F, numba targeting the host).
AVX512 = bool(_FEATURES.get("avx512f", False))
#: True where the AVX2 step is compiled in.
AVX2 = bool(_FEATURES.get("avx2", False))


def available_widths() -> tuple[int, ...]:
    """Rows per step of every partition step compiled in here: 0 (the scalar loop), 8 (AVX2), 16 (AVX-512)."""
    return (0,) + ((8,) if AVX2 else ()) + ((16,) if AVX512 else ())


def requested_width() -> int | None:
    """Rows per vector step ``LCSTACK_SIMD`` asks for: 16, 8, 0 (scalar loop), or ``None`` (measure them).

    ``LCSTACK_SIMD``: unset or ``auto`` for the step measured fastest on this CPU
    (:func:`lcstack.forest.calibrated_width`: the widest step is not always the fastest, e.g. on AMD
    Zen 4); ``avx512`` (or ``1``) for the widest step this CPU has; ``avx2`` for the 8-row step (the scalar
    loop without AVX2); ``0``, ``off`` or ``scalar`` for none. Any other value raises
    :class:`~lcstack.errors.InvalidInputError`.
    """
    value = os.environ.get("LCSTACK_SIMD", "auto")
    choice = value.strip().lower()
    if choice in _SCALAR:
        return 0
    if choice == "avx2":
        return 8 if AVX2 else 0
    if choice in _WIDEST:
        return max(available_widths())
    if choice in _AUTO:
        return 0 if len(available_widths()) == 1 else None
    raise InvalidInputError(
        f"LCSTACK_SIMD = {value!r} is not a partition step: use auto (the fastest on this CPU), avx512 (the "
        "widest it has), avx2, or 0 (the scalar loop)."
    )


_SCALAR = ("0", "off", "false", "no", "none", "scalar")
_WIDEST = ("1", "on", "true", "yes", "avx512")
_AUTO = ("", "auto")


if numba is not None:

    @jit(nogil=True, inline="always")
    def _partition_scalar(src, i, col, thr, nan_left, dst, nl, nr, width):  # pragma: no cover - compiled
        one = np.uint64(1)
        n_left = np.uint64(0)
        for k in range(width):
            x = col[src[i + k]]
            if not ((x > thr) if nan_left else not (x <= thr)):
                n_left += one
        left = nl
        right = nr + one - (width - n_left)
        for k in range(width):
            r = src[i + k]
            x = col[r]
            if (x > thr) if nan_left else not (x <= thr):
                dst[right] = r
                right += one
            else:
                dst[left] = r
                left += one
        return n_left

    @jit(nogil=True, inline="always")
    def partition16_scalar(src, i, n, col, thr, nan_left, dst, nl, nr):  # pragma: no cover - compiled
        """:func:`partition16` in plain numba (the reference, and the stand-in without AVX-512)."""
        return _partition_scalar(src, i, col, thr, nan_left, dst, nl, nr, n)

    @jit(nogil=True, inline="always")
    def partition8_scalar(src, i, col, thr, nan_left, dst, nl, nr):  # pragma: no cover - compiled
        """:func:`partition8` in plain numba (the reference, and the stand-in without AVX2)."""
        return _partition_scalar(src, i, col, thr, nan_left, dst, nl, nr, np.uint64(8))

else:  # pragma: no cover - numba is installed in the test environment
    partition16_scalar = partition8_scalar = None


def _lane_orders(width: int, last: bool) -> np.ndarray:
    """Per lane mask, the ``vpermd`` order that puts the masked lanes first (or last), in lane order."""
    table = np.zeros((1 << width, width), dtype=np.int32)
    for mask in range(1 << width):
        chosen = [k for k in range(width) if mask >> k & 1]
        if last:
            table[mask, width - len(chosen) :] = chosen
        else:
            table[mask, : len(chosen)] = chosen
    return table


def _make_intrinsics(avx512: bool, avx2: bool):  # pragma: no cover - codegen runs inside numba
    """Return the numba intrinsics of the SIMD partition steps for the CPU's instruction sets.

    Long because the LLVM IR of every step is emitted in this one closure, sharing its declared types
    and helpers.
    """
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i1, i8, i16, i32, i64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    ptr = ir.PointerType()  # opaque pointer (LLVM >= 15)

    def declare(module, name, ret, args):
        return cgutils.get_or_insert_function(module, ir.FunctionType(ret, args), name)

    def typed(src, col, dst):
        return (
            isinstance(src, types.Array) and src.dtype == types.uint32
            and isinstance(dst, types.Array) and dst.dtype == types.uint32
            and isinstance(col, types.Array) and col.dtype == types.float32
            and src.layout == "C" and dst.layout == "C" and col.layout == "C"  # unit strides
        )  # fmt: skip

    def split(builder, x, thr, nan_left, width):
        """Lanes going right, as a ``<width x i1>`` vector."""
        v_f32 = ir.VectorType(ir.FloatType(), width)
        all_lanes = ir.Constant(ir.VectorType(i1, width), [1] * width)
        t = builder.insert_element(ir.Constant(v_f32, ir.Undefined), thr, i32(0))
        t = builder.shuffle_vector(
            t, ir.Constant(v_f32, ir.Undefined), ir.Constant(ir.VectorType(i32, width), [0] * width)
        )
        greater = builder.fcmp_ordered(">", x, t)  # False for NaN
        not_le = builder.xor(builder.fcmp_ordered("<=", x, t), all_lanes)  # True for NaN
        flag = nan_left if nan_left.type == i1 else builder.trunc(nan_left, i1)
        return builder.select(flag, greater, not_le)

    out = {}
    if avx512:
        v16_i32, v16_f32, v16_i1 = (
            ir.VectorType(i32, 16),
            ir.VectorType(ir.FloatType(), 16),
            ir.VectorType(i1, 16),
        )

        def low_lanes(builder, count):
            bits = builder.sub(builder.shl(i32(1), builder.trunc(count, i32)), i32(1))
            return builder.bitcast(builder.trunc(bits, i16), v16_i1)

        @intrinsic
        def partition16(typingctx, src, i, n, col, thr, nan_left, dst, nl, nr):
            if not typed(src, col, dst):
                return None
            sig = types.uint64(
                src,
                types.uint64,
                types.uint64,
                col,
                types.float32,
                types.boolean,
                dst,
                types.uint64,
                types.uint64,
            )

            def codegen(context, builder, sig, args):
                src_p = context.make_array(sig.args[0])(context, builder, args[0]).data
                col_p = context.make_array(sig.args[3])(context, builder, args[3]).data
                dst_p = context.make_array(sig.args[6])(context, builder, args[6]).data
                i_, n_, thr_, nan_left_, nl_, nr_ = args[1], args[2], args[4], args[5], args[7], args[8]
                module = builder.module
                lanes = low_lanes(builder, n_)  # the first n rows; the others are neither read nor written
                zeros = ir.Constant(v16_i32, [0] * 16)
                load = declare(module, "llvm.masked.load.v16i32.p0", v16_i32, [ptr, i32, v16_i1, v16_i32])
                rows = builder.call(load, [builder.gep(src_p, [i_]), i32(4), lanes, zeros])
                gather = declare(
                    module,
                    "llvm.x86.avx512.mask.gather.dps.512",
                    v16_f32,
                    [v16_f32, ptr, v16_i32, v16_i1, i32],
                )
                x = builder.call(gather, [ir.Constant(v16_f32, [0.0] * 16), col_p, rows, lanes, i32(4)])
                right = builder.and_(split(builder, x, thr_, nan_left_, 16), lanes)
                left = builder.xor(right, lanes)
                compress = declare(
                    module, "llvm.x86.avx512.mask.compress.v16i32", v16_i32, [v16_i32, v16_i32, v16_i1]
                )
                left_rows = builder.call(compress, [rows, zeros, left])
                right_rows = builder.call(compress, [rows, zeros, right])
                ctpop = declare(module, "llvm.ctpop.i16", i16, [i16])
                n_left = builder.zext(builder.call(ctpop, [builder.bitcast(left, i16)]), i64)
                n_right = builder.sub(n_, n_left)
                store = declare(
                    module, "llvm.masked.store.v16i32.p0", ir.VoidType(), [v16_i32, ptr, i32, v16_i1]
                )
                at_left = builder.gep(dst_p, [nl_])
                at_right = builder.gep(dst_p, [builder.sub(builder.add(nr_, i64(1)), n_right)])
                builder.call(store, [left_rows, at_left, i32(4), low_lanes(builder, n_left)])
                builder.call(store, [right_rows, at_right, i32(4), low_lanes(builder, n_right)])
                return n_left

            return sig, codegen

        out["partition16"] = partition16

    if avx2:
        v8_i32, v8_f32 = ir.VectorType(i32, 8), ir.VectorType(ir.FloatType(), 8)
        first_orders = _lane_orders(8, last=False)
        last_orders = _lane_orders(8, last=True)
        table_type = types.Array(types.int32, 2, "C")

        @intrinsic
        def partition8(typingctx, src, i, col, thr, nan_left, dst, nl, nr):
            if not typed(src, col, dst):
                return None
            sig = types.uint64(
                src, types.uint64, col, types.float32, types.boolean, dst, types.uint64, types.uint64
            )

            def codegen(context, builder, sig, args):
                src_p = context.make_array(sig.args[0])(context, builder, args[0]).data
                col_p = context.make_array(sig.args[2])(context, builder, args[2]).data
                dst_p = context.make_array(sig.args[5])(context, builder, args[5]).data
                i_, thr_, nan_left_, nl_, nr_ = args[1], args[3], args[4], args[6], args[7]
                module = builder.module
                rows = builder.load(builder.gep(src_p, [i_]), typ=v8_i32, align=4)
                gather = declare(
                    module, "llvm.x86.avx2.gather.d.ps.256", v8_f32, [v8_f32, ptr, v8_i32, v8_f32, i8]
                )
                every = builder.bitcast(ir.Constant(v8_i32, [-1] * 8), v8_f32)  # sign bits: gather all lanes
                x = builder.call(gather, [ir.Constant(v8_f32, ir.Undefined), col_p, rows, every, i8(4)])
                right = builder.bitcast(split(builder, x, thr_, nan_left_, 8), i8)
                left = builder.xor(right, i8(0xFF))
                firsts = context.make_array(table_type)(
                    context, builder, context.make_constant_array(builder, table_type, first_orders)
                ).data
                lasts = context.make_array(table_type)(
                    context, builder, context.make_constant_array(builder, table_type, last_orders)
                ).data
                permd = declare(module, "llvm.x86.avx2.permd", v8_i32, [v8_i32, v8_i32])

                def order(table, mask):
                    at = builder.gep(table, [builder.mul(builder.zext(mask, i64), i64(8))])
                    return builder.load(at, typ=v8_i32, align=4)

                left_rows = builder.call(permd, [rows, order(firsts, left)])  # left rows first
                right_rows = builder.call(permd, [rows, order(lasts, right)])  # right rows last
                ctpop = declare(module, "llvm.ctpop.i8", i8, [i8])
                n_left = builder.zext(builder.call(ctpop, [left]), i64)
                vector_ptr = v8_i32.as_pointer()
                at_left = builder.bitcast(builder.gep(dst_p, [nl_]), vector_ptr)
                at_right = builder.bitcast(builder.gep(dst_p, [builder.sub(nr_, i64(7))]), vector_ptr)
                builder.store(left_rows, at_left, align=4)
                builder.store(right_rows, at_right, align=4)
                return n_left

            return sig, codegen

        out["partition8"] = partition8
    return out


_intrinsics = _make_intrinsics(AVX512, AVX2) if (AVX512 or AVX2) else {}
#: The AVX-512 step where compiled in, else its stand-in.
partition16 = _intrinsics.get("partition16", partition16_scalar)
#: The AVX2 step where compiled in, else its stand-in.
partition8 = _intrinsics.get("partition8", partition8_scalar)
