"""The builder API and the IR's invariants: every rule of DESIGN.md raises a named error."""

from __future__ import annotations

import pytest
import sympy

import resgen as rg
from resgen.ir.nodes import H, Kind


def prenorm() -> tuple[rg.Block, rg.Value, rg.Value, rg.Value]:
    b = rg.Block("t")
    return b, b.input("x", rg.bf16), b.input("residual", rg.bf16), b.weight("weight", rg.bf16)


def test_builder_records_kinds_and_promoted_dtypes():
    b = rg.Block("t")
    x, r32, w = b.input("x", rg.bf16), b.input("r", rg.f32), b.weight("w", rg.bf16)
    assert (x + w).kind is Kind.ROW and (x + w).dtype == rg.bf16
    assert (x + r32).dtype == rg.f32
    assert rg.row_sum(x).kind is Kind.ROWS
    assert (x * 2.0).dtype == rg.bf16  # Python numbers do not promote
    assert (b.weight("w2", rg.f16) + w).dtype == rg.f32  # f16 with bf16 is f32, as in torch
    assert rg.cast(x, "f16").dtype == rg.f16


def test_structural_keys_are_stable_and_distinguish_graphs():
    def build(eps: float) -> rg.Block:
        b, x, r, w = prenorm()
        b.output("y", rg.rms_norm(x + r, w, eps=eps))
        return b

    assert build(1e-6).key == build(1e-6).key
    assert build(1e-6).key != build(1e-5).key


def test_hidden_is_a_sympy_symbol_until_specialized():
    b, x, r, w = prenorm()
    b.output("y", rg.rms_norm(x + r, w))
    assert b.hidden == H and isinstance(b.hidden, sympy.Symbol)
    assert rg.pipeline(b, hidden=4096).hidden == 4096


@pytest.mark.parametrize("make, message", [
    (lambda b, x, r, w: rg.row_sum(x) + w, "column vector with a row scalar"),
    (lambda b, x, r, w: b.output("s", b.scalar("alpha") * 2.0), "must be a row tensor, a row scalar"),
    (lambda b, x, r, w: b.output("s", w), "must be a row tensor, a row scalar"),
    (lambda b, x, r, w: b.input("q", "int4"), "unknown dtype"),
    (lambda b, x, r, w: b.input("x", rg.f32), "duplicate name 'x'"),
    (lambda b, x, r, w: b.weight("seed"), "reserved"),
    (lambda b, x, r, w: b.input("not an identifier"), "identifier"),
    (lambda b, x, r, w: x + rg.Block("other").input("z"), "belongs to block 'other'"),
    (lambda b, x, r, w: rg.row_sum(w), "argument 'v' must be a row"),
    (lambda b, x, r, w: rg.layer_norm(x, x), "argument 'weight' must be a col"),
    (lambda b, x, r, w: rg.dropout(x, 1.0), "argument 'p'"),
    (lambda b, x, r, w: rg.rms_norm(x, w, eps=-1.0), "argument 'eps'"),
    (lambda b, x, r, w: rg.rms_norm(x, offset=1.0), "argument 'offset'"),
    (lambda b, x, r, w: x + "3", "argument 'b' must be a resgen Value or a number"),
    (lambda b, x, r, w: b.output("y", x, inplace="weight"), "must name a row input"),
    (lambda b, x, r, w: b.output("y", x, dtype=rg.f32, inplace="x"), "in-place output"),
])
def test_builder_errors_name_the_op_and_argument(make, message):
    b, x, r, w = prenorm()
    with pytest.raises(rg.VerifyError, match=message):
        make(b, x, r, w)


def test_type_errors_are_also_type_errors():
    b, x, r, w = prenorm()
    with pytest.raises(TypeError):
        rg.row_sum(x) + w


def test_verify_rejects_unused_inputs_and_empty_blocks():
    b, x, r, w = prenorm()
    with pytest.raises(rg.VerifyError, match="no outputs"):
        b.verify()
    b.output("y", x + r)
    with pytest.raises(rg.VerifyError, match="weight 'weight' is not used"):
        b.verify()


def test_verify_needs_a_row_input():
    b = rg.Block("t")
    w = b.weight("w")
    with pytest.raises(rg.VerifyError):
        b.output("y", w * 2.0)


def test_scalar_kinds_combine():
    b, x, r, w = prenorm()
    alpha = b.scalar("alpha")
    s = alpha * 2.0 + 1.0
    assert s.kind is Kind.SCALAR
    assert (rg.row_max(x) * s).kind is Kind.ROWS
    assert (w * s).kind is Kind.COL


def test_values_have_no_truth_value():
    b, x, r, w = prenorm()
    with pytest.raises(TypeError):
        bool(x)


def test_several_reductions_in_sequence_verify():
    b, x, r, w = prenorm()
    h = r + rg.rms_norm(x, w)
    b.output("y", rg.layer_norm(h))
    b.output("amax", rg.row_max(rg.abs(h)))
    b.output("mean", rg.row_mean(h), dtype=rg.f32)
    b.verify()


@pytest.mark.parametrize("name", list(rg.catalog))
def test_text_round_trips_through_the_parser(name):
    from resgen.ir.parser import parse_block
    from resgen.ir.printer import print_block

    for block in (rg.catalog[name](), rg.pipeline(rg.catalog[name](rg.f16)),
                  rg.pipeline(rg.catalog[name](), rg.catalog[name].fit(4097))):
        text = print_block(block)
        parsed = parse_block(text)
        assert print_block(parsed) == text and parsed.key == block.key


@pytest.mark.parametrize("text, message", [
    ("nonsense", "expected 'block"),
    ('block @b(hidden = H) {\n  %x = input "x" : row<bf16>\n  %0 = add %x, %q : row<bf16>\n}', "operands"),
    ('block @b(hidden = H) {\n  %x = input "x" : row<bf16>\n  %0 = add %x, %x : row<f32>\n  output "y" = %0 : row<f32>\n}',
     "declared row<f32>"),
    ('block @b(hidden = H) {\n  %x = input "x" : row<bf16>\n  what is this\n}', "line 3"),
])
def test_parse_errors_name_the_line(text, message):
    from resgen.ir.parser import parse_block

    with pytest.raises(rg.SpecError, match=message):
        parse_block(text)


def test_textual_ir_files_are_specs(tmp_path, capsys):
    from resgen.cli import main
    from resgen.ir.printer import print_block

    path = tmp_path / "gemma.rgir"
    path.write_text(print_block(rg.catalog.gemma()))
    assert main(["ir", str(path), "--hidden", "128"]) == 0
    assert "block @gemma(hidden = 128)" in capsys.readouterr().out
