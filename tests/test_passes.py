"""Every pass keeps the block valid and does what its name says."""

from __future__ import annotations

import pytest
import torch

import resgen as rg
from resgen.ir.dtypes import from_storage
from resgen.ir.printer import print_block
from resgen.passes import CSE, DCE, Canonicalize, DecomposeNorms, Specialize, passes_for, pipeline
from resgen.verification import random_inputs
from tests.conftest import CATALOG, DTYPES, GOLDEN, check_golden, fit

OPS_AFTER_LOWERING = {"add", "sub", "mul", "div", "maximum", "minimum", "neg", "sqrt", "rsqrt", "abs", "cast",
                      "dropout", "row_sum", "row_max", "row_var", "const", "group_max", "exp2", "exponent"}


@pytest.mark.parametrize("name", CATALOG)
@pytest.mark.parametrize("hidden", [None, 1, 4097])
def test_every_pass_leaves_a_valid_block(name, hidden):
    seen: list[str] = []

    def check(p, block):
        block.verify()
        seen.append(p.name)

    lowered = pipeline(rg.catalog[name](), fit(name, hidden), after_each=check)
    assert seen == [p.name for p in passes_for(hidden)]
    assert {n.op for n in lowered.body} <= OPS_AFTER_LOWERING


@pytest.mark.parametrize("name", CATALOG)
@pytest.mark.parametrize("dt", DTYPES)
def test_lowered_block_computes_what_the_original_does(name, dt):
    block, hidden = rg.catalog[name](dt), fit(name, 257)
    lowered = pipeline(block, hidden=hidden)
    args = random_inputs(block, (5,), hidden)
    want, got = rg.reference(block, **args, seed=3), rg.reference(lowered, **args, seed=3)
    for o in block.outputs:  # (as values: a packed e2m1 output has no .float())
        torch.testing.assert_close(from_storage(got[o.name], o.dtype), from_storage(want[o.name], o.dtype),
                                   rtol=1e-5, atol=1e-5)


def test_decompose_gives_layer_norm_a_mean_and_a_one_pass_variance_of_the_same_row():
    b = rg.Block("ln")
    b.output("y", rg.layer_norm(b.input("x")))
    text = print_block(DecomposeNorms().run(b))
    assert "layer_norm" not in text
    assert text.count("row_sum %x") == 1 and text.count("row_var %x") == 1 and "sub %x" in text


def test_canonicalize_folds_scalars_with_sympy_and_drops_identities():
    b = rg.Block("c")
    x = b.input("x")
    negated = -x
    b.output("y", (x * 1.0 + 0.0) * (2.0 * 3.0) / 1.0 - (-negated))
    text = print_block(DCE().run(Canonicalize().run(b)))
    assert "const 6.0" in text
    assert text.count("mul") == 1 and "neg" not in text and "div" not in text


def test_specialize_binds_hidden_in_constants():
    b = rg.Block("m")
    b.output("m", rg.row_mean(b.input("x")))
    text = print_block(pipeline(b, hidden=4096))
    assert "1/4096" in text and "H" not in text.split("\n", 1)[1]
    with pytest.raises(rg.VerifyError, match="hidden"):
        Specialize(0)


def test_cse_merges_commutative_duplicates():
    b = rg.Block("c")
    x, y = b.input("x"), b.input("y")
    b.output("a", (x + y) * (y + x))
    merged = CSE().run(b)
    assert sum(n.op == "add" for n in merged.body) == 1


def test_dce_removes_dead_nodes_and_keeps_parameters():
    b = rg.Block("d")
    x = b.input("x")
    rg.sqrt(x)  # never used
    b.output("y", x * 2.0)
    assert not any(n.op == "sqrt" for n in DCE().run(b).body)
    assert DCE().run(b).params == b.params


@pytest.mark.parametrize("name", CATALOG)
def test_printer_output_is_stable(name):
    block = rg.catalog[name]()
    text = print_block(block) + "\n" + print_block(pipeline(block, hidden=4096))
    check_golden(GOLDEN / "ir" / f"{name}.txt", text)
