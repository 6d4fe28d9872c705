"""A hypothesis strategy over the builder API: random valid blocks of every op."""

from __future__ import annotations

from hypothesis import strategies as st

import resgen as rg

DTYPES = (rg.f32, rg.f16, rg.bf16)


@st.composite
def random_blocks(draw, max_ops: int = 8, groups: bool = False) -> rg.Block:
    """A valid block: row inputs, maybe weights and a scalar, a random op sequence, 1-3 outputs.

    Values stay finite: square roots and rsqrt see |v| + 1, divisions divide by |v| + 1. `groups`:
    group reductions of 2 to 32 columns too (no gradient; hidden must be a multiple of 32), broadcast
    back over their columns, and maybe a group output.
    """
    b = rg.Block("rand")
    inputs = [b.input(f"in{i}", draw(st.sampled_from(DTYPES))) for i in range(draw(st.integers(1, 3)))]
    rows = list(inputs)
    cols = [b.weight(f"w{i}", draw(st.sampled_from(DTYPES))) for i in range(draw(st.integers(0, 2)))]
    scalars = [b.scalar("alpha")] if draw(st.booleans()) else []
    row_scalars: list[rg.Value] = []
    group_values: list[rg.Value] = []
    ops = ["add", "sub", "mul", "div", "max", "sqrt", "rsqrt", "abs", "neg", "cast", "row_sum", "row_mean", "row_max",
           "row_var", "layer_norm", "rms_norm", "dropout", "rs"] + (["group"] * 3 if groups else [])
    for _ in range(draw(st.integers(1, max_ops))):
        a = draw(st.sampled_from(rows))
        op = draw(st.sampled_from(ops))
        other = draw(st.sampled_from(rows + cols + scalars + row_scalars + [1.5]))
        if op == "add":
            rows.append(a + other)
        elif op == "sub":
            rows.append(a - other)
        elif op == "mul":
            rows.append(a * other)
        elif op == "div":
            rows.append(a / (rg.abs(a) + 1.0) if isinstance(other, float) else a / (rg.abs(other) + 1.0))
        elif op == "max":
            rows.append(rg.maximum(a, other))
        elif op == "sqrt":
            rows.append(rg.sqrt(rg.abs(a) + 1.0))
        elif op == "rsqrt":
            rows.append(rg.rsqrt(rg.abs(a) + 1.0))
        elif op == "abs":
            rows.append(rg.abs(a))
        elif op == "neg":
            rows.append(-a)
        elif op == "cast":
            rows.append(rg.cast(a, draw(st.sampled_from(DTYPES))))
        elif op in ("row_sum", "row_mean", "row_max", "row_var"):
            row_scalars.append(getattr(rg, op)(a))
        elif op == "layer_norm":
            w = draw(st.sampled_from([None, *cols]))
            bias = draw(st.sampled_from([None, *cols]))
            rows.append(rg.layer_norm(a, w, bias, eps=1e-5))
        elif op == "rms_norm":
            w = draw(st.sampled_from([None, *cols]))
            rows.append(rg.rms_norm(a, w, eps=1e-6, offset=draw(st.sampled_from([0.0, 1.0])) if w is not None else 0.0))
        elif op == "dropout":
            rows.append(rg.dropout(a, draw(st.sampled_from([0.1, 0.5]))))
        elif op == "rs" and row_scalars:
            rows.append(a * (rg.abs(draw(st.sampled_from(row_scalars))) + 1.0))
        elif op == "group":
            size = draw(st.sampled_from([2, 4, 8, 16, 32]))
            g = rg.group_max(rg.abs(a), size) if draw(st.booleans()) else rg.group_sum(a, size)
            group_values.append(g)
            rows.append(a - g if draw(st.booleans()) else a / (rg.abs(g) + 1.0))
    # Every parameter feeds the final value, so none is unused.
    final = rows[-1]
    for p in inputs + cols:
        final = final + p
    for s in scalars:
        final = final * s
    b.output("result", final, dtype=draw(st.sampled_from(DTYPES)))
    if row_scalars and draw(st.booleans()):
        b.output("stat", draw(st.sampled_from(row_scalars)), dtype=rg.f32)
    if len(rows) > 2 and draw(st.booleans()):
        b.output("mid", rows[len(rows) // 2])
    if group_values and draw(st.booleans()):
        b.output("group", draw(st.sampled_from(group_values)), dtype=draw(st.sampled_from(DTYPES + (rg.e8m0,))))
    return b
