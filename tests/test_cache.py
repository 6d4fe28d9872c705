"""The disk cache: atomic entries, corruption healed, concurrent writers safe."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import resgen as rg
from resgen.codegen import plan_and_source
from resgen.codegen.render import environment, render
from resgen.runtime.cache import DiskCache
from resgen.runtime.compile import compile_for_device


def _compile(monkeypatch, tmp_path, arch="sm_90"):
    monkeypatch.setenv("RESGEN_CACHE_DIR", str(tmp_path))
    plan, source = plan_and_source(rg.catalog.llama(), 1024, arch=arch)
    return compile_for_device(source, plan.name, arch)


def _entries(tmp_path):
    return sorted((tmp_path / "cubin").glob("*.json"))


def test_second_compile_is_served_from_disk(monkeypatch, tmp_path):
    first = _compile(monkeypatch, tmp_path)
    [entry] = _entries(tmp_path)
    stamp = entry.stat().st_mtime_ns
    assert _compile(monkeypatch, tmp_path).cubin == first.cubin
    assert entry.stat().st_mtime_ns == stamp


def test_arch_is_part_of_the_key(monkeypatch, tmp_path):
    _compile(monkeypatch, tmp_path, "sm_80")
    _compile(monkeypatch, tmp_path, "sm_90")
    assert len(_entries(tmp_path)) == 2


def test_corrupt_entries_are_rebuilt(monkeypatch, tmp_path):
    good = _compile(monkeypatch, tmp_path)
    [entry] = _entries(tmp_path)
    for damage in (b"", b"{not json", entry.read_bytes()[:100]):
        entry.write_bytes(damage)
        assert _compile(monkeypatch, tmp_path).cubin == good.cubin
        assert json.loads(entry.read_bytes())["sha256"]
    record = json.loads(entry.read_bytes())
    record["payload"]["log"] = "tampered"
    entry.write_text(json.dumps(record))
    healed = _compile(monkeypatch, tmp_path)
    assert healed.log != "tampered" and healed.resources == good.resources


def test_compiled_templates_are_cached_and_a_damaged_entry_is_compiled_again(monkeypatch, tmp_path):
    monkeypatch.setenv("RESGEN_CACHE_DIR", str(tmp_path))
    plan, want = plan_and_source(rg.catalog.gpt2(), 1000)
    assert render(plan, environment.__wrapped__()) == want  # a fresh process's environment: compiles
    entries = sorted((tmp_path / "templates").glob("*.json"))
    assert entries
    stamps = [e.stat().st_mtime_ns for e in entries]
    assert render(plan, environment.__wrapped__()) == want  # served from disk: nothing written
    assert [e.stat().st_mtime_ns for e in entries] == stamps
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:200])
    assert render(plan, environment.__wrapped__()) == want  # damaged: compiled and stored again
    assert all(json.loads(e.read_bytes())["sha256"] for e in entries)


def test_a_template_cache_that_cannot_be_used_costs_only_the_compile(monkeypatch, tmp_path):
    monkeypatch.setenv("RESGEN_CACHE_DIR", str(tmp_path))
    (tmp_path / "templates").write_text("a file where the folder would go")
    plan, want = plan_and_source(rg.catalog.llama(), 1000)
    assert render(plan, environment.__wrapped__()) == want


def test_concurrent_compiles_of_one_kernel_both_succeed(tmp_path):
    script = textwrap.dedent(f"""
        import os
        os.environ["RESGEN_CACHE_DIR"] = {str(tmp_path)!r}
        import resgen as rg
        from resgen.codegen import plan_and_source
        from resgen.runtime.compile import compile_for_device
        plan, source = plan_and_source(rg.catalog.gpt2(), 2048)
        for _ in range(3):
            b = compile_for_device(source, plan.name, "sm_90")
            assert b.cubin[:4] == b"\\x7fELF"

    """)
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert len(_entries(tmp_path)) == 1
    assert not list((tmp_path / "cubin").glob(".*.tmp"))
    cache = DiskCache("cubin", root=tmp_path)
    assert cache.load(_entries(tmp_path)[0].stem)["cubin"][:4] == b"\x7fELF"
