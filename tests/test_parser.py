"""The textual IR is untrusted input: never evaluated, bounded, and checked like the builder."""

from __future__ import annotations

import time

import pytest

import resgen as rg
from resgen.ir.parser import parse_block, parse_constant
from resgen.ir.printer import print_block

BERT = print_block(rg.catalog.bert(rg.f32))
LLAMA = print_block(rg.catalog.llama_fp32_residual(rg.bf16))


def test_constants_are_read_by_a_grammar_not_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    text = LLAMA.replace("  output", f'  %9 = const __import__("os").system("touch {marker}") : scalar<f32>\n  output', 1)
    with pytest.raises(rg.SpecError, match=r"line \d+ .*a number, H"):
        parse_block(text)
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [
    ("9**9**9", "integer exponent"),
    ("(((9**16)**16)**16)", "at most 4096 bits"),
    ("1" * 300, "at most 200 characters"),
    ("(" * 40 + "1" + ")" * 40, "nested at most"),
    ("1/0", "division by zero"),
    ("1e999", "finite"),
    ("H**H", "integer exponent"),
    ("2 +", "ends early"),
    ("lambda: 0", "a number, H"),
])
def test_hostile_constants_fail_fast_with_what_was_expected(text, message):
    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
        parse_constant(text)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("text, value", [("1e-06", 1e-06), ("1/4096", 1 / 4096), ("-2.5", -2.5), ("2**-3", 0.125)])
def test_constants_that_the_printer_writes_parse(text, value):
    assert float(parse_constant(text)) == value
    assert str(parse_constant("1/H")) == "1/H"


@pytest.mark.parametrize("old, new, message", [
    ("eps = 1e-12", "eps = abc", "line 10 .*'eps'.* a number"),
    ("site = 0", "site = 1.5", "line 8 .*'site' must be an int"),
    ("p = 0.1", "p = 2.0", "line 8 .*'p' must be a number in \\[0, 1\\)"),
    ("eps = 1e-12", "eps = -1", "line 10 .*'eps' must be a finite number >= 0"),
    ("eps = 1e-12", "eps = 1e-12, color = 3", "unknown attribute"),
    ('%residual = input "residual"', '%seed = input "seed"', "line 3 .*reserved"),
    ('%residual = input "residual"', '%class = input "class"', "line 3 .*identifier"),
    ("%2 = add %residual, %1", "%2 = add %residual, %7", "line 9 .*operands defined above"),
    ('%bias = weight "bias"', '%bias = const "bias"', "line 4"),
    ("hidden = H", "hidden = X", "line 1: hidden = H or an integer"),
])
def test_malformed_files_give_one_line_naming_the_line(old, new, message):
    text = BERT.replace(old, new, 1)
    assert text != BERT
    with pytest.raises(rg.SpecError, match=message) as info:
        parse_block(text)
    assert "\n" not in str(info.value)


def test_unknown_inplace_target_is_an_error():
    text = LLAMA.replace('inplace "residual"', 'inplace "nope"')
    with pytest.raises(rg.SpecError, match="'inplace' must name a row input"):
        parse_block(text)


def test_builder_and_parser_share_the_attribute_checks():
    b = rg.Block("t")
    x = b.input("x")
    with pytest.raises(rg.VerifyError, match="'p' must be a number in"):
        rg.dropout(x, 2.0)
    with pytest.raises(rg.VerifyError, match="'eps' must be a finite number >= 0"):
        rg.layer_norm(x, eps=float("nan"))


def test_any_python_identifier_can_name_a_parameter():
    b = rg.Block("t")
    names = ["INFINITY", "NAN", "NULL", "EOF", "rsqrtf", "int", "float", "threadIdx", "lane", "rg_smem", "__x"]
    total = b.input(names[0])
    for n in names[1:]:
        total = total + b.input(n)
    b.output("y", total)
    parse_block(print_block(b))  # the file form accepts them too
