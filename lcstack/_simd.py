"""AVX-512 partition step for the tree kernels of :mod:`lcstack.fastpredict`.

One call of :func:`partition16` does, for 16 rows at once, what the scalar loop of ``_descend`` does
for one: gather ``col[row]`` for the 16 row indices ``src[i:i + 16]`` (``vgatherdps``), compare with
the split's threshold, and store the rows that go left at ``dst[nl:nl + n_left]`` and those that go
right at ``dst[nr + 1 - n_right:nr + 1]``, each group in its input order (``vpcompressd`` into a
register, then a masked store: the memory form of ``vpcompressd`` is microcoded on AMD Zen 4). It
returns ``n_left``. The comparison is the scalar kernel's: a row goes right when ``x > thr`` if NaN
goes left (``nan_left``), else when ``not x <= thr``, so NaN follows ``missing_go_to_left``.

LLVM cannot select AVX-512 intrinsics for a CPU without them (it aborts the process), so the
intrinsic exists only where numba compiles for a host with AVX-512F. Everywhere else
:func:`partition16` is :func:`partition16_scalar`, a plain numba function with the same contract
(the kernels then never call it: :data:`AVX512` is False and they keep their scalar loop). The
tests check both against each other on the machines that have AVX-512.

On the 2-core Intel Xeon (Emerald Rapids) benchmark machine this step made the whole kernel 1.2-1.5x
faster (``benchmarks/RESULTS.md``); set ``LCSTACK_SIMD=0`` to switch it off at run time.
"""

from __future__ import annotations

import os
import platform

import numpy as np

__all__ = ["AVX512", "WIDTH", "partition16", "partition16_scalar", "simd_enabled"]

#: Rows per call of :func:`partition16`.
WIDTH = 16

try:
    import numba
except ImportError:  # pragma: no cover - numba is installed in the test environment
    numba = None


def _host_has_avx512() -> bool:
    """Whether numba compiles for this host's CPU and that CPU has AVX-512F."""
    if numba is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if numba.config.DISABLE_JIT:  # the kernels run as Python: no intrinsics
        return False
    cpu_name = numba.config.CPU_NAME
    if cpu_name not in (None, "", "host"):  # NUMBA_CPU_NAME=generic etc.: portable code, no AVX-512
        return False
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - llvmlite cannot read the host's features
        return False
    return bool(features.get("avx512f", False))


#: True where the AVX-512 partition step is compiled in (x86-64 with AVX-512F, numba targeting the host).
AVX512 = _host_has_avx512()


def simd_enabled() -> bool:
    """Whether the kernels use the AVX-512 step: :data:`AVX512` and ``LCSTACK_SIMD`` not ``0``."""
    return AVX512 and os.environ.get("LCSTACK_SIMD", "1").strip().lower() not in ("0", "false", "no", "off")


if numba is not None:

    @numba.njit(nogil=True, cache=True, inline="always")
    def partition16_scalar(src, i, col, thr, nan_left, dst, nl, nr):  # pragma: no cover - compiled
        """:func:`partition16` in plain numba (the reference, and the stand-in without AVX-512)."""
        one = np.uint64(1)
        width = np.uint64(WIDTH)
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

else:  # pragma: no cover - numba is installed in the test environment
    partition16_scalar = None


def _make_intrinsic():  # pragma: no cover - only built on AVX-512 hosts; its codegen runs inside numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    i1, i16, i32, i64 = ir.IntType(1), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    ptr = ir.PointerType()  # opaque pointer (LLVM >= 15)
    v_i32 = ir.VectorType(i32, WIDTH)
    v_f32 = ir.VectorType(ir.FloatType(), WIDTH)
    v_i1 = ir.VectorType(i1, WIDTH)

    def declare(module, name, ret, args):
        return cgutils.get_or_insert_function(module, ir.FunctionType(ret, args), name)

    def low_lanes(builder, count):
        """Return the mask of the first ``count`` (0..16) lanes."""
        bits = builder.sub(builder.shl(i32(1), builder.trunc(count, i32)), i32(1))
        return builder.bitcast(builder.trunc(bits, i16), v_i1)

    @intrinsic
    def partition16(typingctx, src, i, col, thr, nan_left, dst, nl, nr):
        if not (
            isinstance(src, types.Array) and src.dtype == types.uint32
            and isinstance(dst, types.Array) and dst.dtype == types.uint32
            and isinstance(col, types.Array) and col.dtype == types.float32
            and src.layout == "C" and dst.layout == "C" and col.layout == "C"  # unit strides
        ):  # fmt: skip
            return None
        sig = types.uint64(
            src, types.uint64, col, types.float32, types.boolean, dst, types.uint64, types.uint64
        )

        def codegen(context, builder, signature, args):
            src_a = context.make_array(signature.args[0])(context, builder, args[0])
            col_a = context.make_array(signature.args[2])(context, builder, args[2])
            dst_a = context.make_array(signature.args[5])(context, builder, args[5])
            i_, thr_, nan_left_, nl_, nr_ = args[1], args[3], args[4], args[6], args[7]
            module = builder.module
            rows = builder.load(builder.gep(src_a.data, [i_]), typ=v_i32, align=4)
            all_lanes = ir.Constant(v_i1, [1] * WIDTH)
            gather = declare(
                module, "llvm.x86.avx512.mask.gather.dps.512", v_f32, [v_f32, ptr, v_i32, v_i1, i32]
            )
            x = builder.call(gather, [ir.Constant(v_f32, ir.Undefined), col_a.data, rows, all_lanes, i32(4)])
            t = builder.insert_element(ir.Constant(v_f32, ir.Undefined), thr_, i32(0))
            t = builder.shuffle_vector(t, ir.Constant(v_f32, ir.Undefined), ir.Constant(v_i32, [0] * WIDTH))
            greater = builder.fcmp_ordered(">", x, t)  # False for NaN
            not_le = builder.xor(builder.fcmp_ordered("<=", x, t), all_lanes)  # True for NaN
            flag = nan_left_ if nan_left_.type == i1 else builder.trunc(nan_left_, i1)
            right = builder.select(flag, greater, not_le)
            left = builder.xor(right, all_lanes)
            compress = declare(module, "llvm.x86.avx512.mask.compress.v16i32", v_i32, [v_i32, v_i32, v_i1])
            zeros = ir.Constant(v_i32, [0] * WIDTH)
            left_rows = builder.call(compress, [rows, zeros, left])
            right_rows = builder.call(compress, [rows, zeros, right])
            ctpop = declare(module, "llvm.ctpop.i16", i16, [i16])
            n_left = builder.zext(builder.call(ctpop, [builder.bitcast(left, i16)]), i64)
            n_right = builder.sub(i64(WIDTH), n_left)
            store = declare(module, "llvm.masked.store.v16i32.p0", ir.VoidType(), [v_i32, ptr, i32, v_i1])
            at_left = builder.gep(dst_a.data, [nl_])
            at_right = builder.gep(dst_a.data, [builder.sub(builder.add(nr_, i64(1)), n_right)])
            builder.call(store, [left_rows, at_left, i32(4), low_lanes(builder, n_left)])
            builder.call(store, [right_rows, at_right, i32(4), low_lanes(builder, n_right)])
            return n_left

        return sig, codegen

    return partition16


partition16 = _make_intrinsic() if AVX512 else partition16_scalar
