"""uda_jax/profiling.py: compiled HLO instructions classed by opcode, fusion kind and custom-call target (tuple
shapes included), and a trace's op times added up per instruction of the step's module."""

import collections
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from uda_jax import profiling


def _compiled():
  def f(x, w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    keys, values = jax.lax.sort((y.reshape(-1), jnp.tanh(y).reshape(-1)), num_keys=1)  # a tuple-shaped op
    return values[:3].sum() + jnp.mean(y * 2.0), keys[-1]
  return jax.jit(f).lower(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))).compile()


def test_every_instruction_gets_its_opcode_fusion_kind_or_target():
  text = _compiled().as_text()
  info = profiling.instructions(text)
  kinds = {k for k, _ in info.values()}
  assert "convolution" in kinds or any(k.startswith("custom-call:") for k in kinds), kinds
  assert "sort" in kinds or any(k.startswith("fusion:") for k in kinds), kinds
  assert all(k.split(":")[0] in text for k in kinds)
  # Every instruction line of the text is classed, under its own name.
  names = [l.split("=")[0].split()[-1].lstrip("%") for l in text.splitlines()
           if " = " in l and not l.lstrip().startswith(("HloModule", "ENTRY", "//")) and "(" in l.split(" = ", 1)[1]]
  assert names and set(names) <= set(info), set(names) - set(info)
  assert profiling._skip_shape("(f32[2]{0}, (s32[], u8[1]{0})) tuple(%a, %b)") == "tuple(%a, %b)"
  assert profiling._skip_shape("f32[2,3]{1,0} add(%a, %b)") == "add(%a, %b)"


_HLO = """HloModule jit_step, is_scheduled=true

%fused_computation (param_0: f32[4,8], param_1: f32[8,2]) -> f32[4,2] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  %param_1 = f32[8,2]{1,0} parameter(1)
  %dot.1 = f32[4,2]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tanh.1 = f32[4,2]{1,0} tanh(%dot.1)
}

%fused_computation.1 (param_0.1: f32[4,2]) -> f32[4,2] {
  %param_0.1 = f32[4,2]{1,0} parameter(0)
  ROOT %negate.1 = f32[4,2]{1,0} negate(%param_0.1)
}

ENTRY %main.9 (a: f32[4,8], b: f32[8,2]) -> (f32[4,2], s32[]) {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %gemm_fusion.3 = f32[4,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation, metadata={op_name="s/dot"}
  %loop_negate_fusion = f32[4,2]{1,0} fusion(%gemm_fusion.3), kind=kLoop, calls=%fused_computation.1
  %cudnn_fusion.1 = f32[4,2] fusion(%a), kind=kCustom, calls=%fused_computation.1, backend_config={"kind":"__cudnn$f"}
  %cudnn-conv.2 = (f32[4,2], u8[]) custom-call(%a, %b), custom_call_target="__cudnn$convForward", metadata={op_name="c"}
  %get-tuple-element.1 = f32[4,2]{1,0} get-tuple-element(%cudnn-conv.2), index=0
  ROOT %tuple = (f32[4,2]{1,0}, s32[]) tuple(%loop_negate_fusion, %get-tuple-element.1)
}
"""


def test_kinds_of_a_gpu_style_module_by_hand():
  info = profiling.instructions(_HLO)
  assert info["gemm_fusion.3"] == ("fusion:kCustom+dot", "s/dot")
  assert info["loop_negate_fusion"] == ("fusion:kLoop", "")
  assert info["cudnn_fusion.1"] == ("fusion:kCustom(__cudnn$f)", "")
  assert info["cudnn-conv.2"] == ("custom-call:__cudnn$convForward", "c")
  assert info["get-tuple-element.1"][0] == "get-tuple-element" and info["tuple"][0] == "tuple"
  assert info["dot.1"][0] == "dot" and info["a"][0] == "parameter"


def test_a_trace_adds_up_per_instruction_of_the_module(tmp_path):
  """On a CPU, without --xla_cpu_enable_xprof_traceme the thunks are not tagged: the summary says how to tag
  them (with the flag, which the benchmark sets before JAX starts, tests/test_bench.py checks the tables)."""
  compiled = _compiled()
  args = (jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4)))
  assert profiling.trace(lambda state, i: (state + 1, compiled(*args)), 0, 2, str(tmp_path)) == (2, None)
  module, times, counts, _ = profiling.op_times(str(tmp_path))
  if times:  # tagged (the flag was set in this process)
    assert set(times) <= set(profiling.instructions(compiled.as_text())) and min(counts.values()) >= 2
  else:
    assert profiling.summary(str(tmp_path), compiled.as_text(), 2).endswith(
        f"set XLA_FLAGS={profiling.CPU_FLAGS[0]} before JAX starts)")
  with pytest.raises(FileNotFoundError, match="no \\*.xplane.pb under"):
    profiling.op_times(str(tmp_path / "empty"))


def test_a_profiler_that_cannot_start_costs_nothing_but_the_table(monkeypatch, tmp_path):
  def fail(log_dir):
    raise RuntimeError("no CUPTI")
  monkeypatch.setattr(jax.profiler, "start_trace", fail)
  states, table = profiling.profile(lambda state, i: pytest.fail("stepped"), "states", 2, str(tmp_path), "")
  assert states == "states" and table == "profile: not taken: the profiler did not start (RuntimeError: no CUPTI)"
  monkeypatch.undo()

  def oom(state, i):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
  _, table = profiling.profile(oom, "states", 2, str(tmp_path), "")
  assert table == "profile: not taken: a traced step failed (RuntimeError: RESOURCE_EXHAUSTED: out of memory)"


Event = collections.namedtuple("Event", "start_ns end_ns stats")


def test_nested_events_count_their_own_time_only():
  """A loop event spanning its body's (CPU thunks nest so): each op keeps its self time; untagged events and
  events after the loop are unaffected."""
  tag = lambda op: [("hlo_module", "m"), ("hlo_op", op)]
  events = [Event(0, 100, tag("while.1")), Event(10, 40, tag("dot.1")), Event(40, 90, tag("fusion.2")),
            Event(50, 60, tag("inner.3")), Event(95, 99, []), Event(120, 130, tag("copy.4"))]
  got = collections.defaultdict(float)
  for (module, op), seconds in profiling._self_times(events):
    assert module == "m"
    got[op] += seconds * 1e9
  assert got == pytest.approx({"while.1": 20, "dot.1": 30, "fusion.2": 40, "inner.3": 10, "copy.4": 10})


def test_a_cpu_loop_is_counted_once_in_a_real_trace(tmp_path):
  """With the flag that tags XLA:CPU's thunks, a jitted fori_loop: every op of the trace is an instruction of the
  compiled module, and the loop's own time is what its body's events leave of it."""
  code = """if True:
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_cpu_enable_xprof_traceme=true"
    import jax, jax.numpy as jnp
    from uda_jax import profiling
    f = jax.jit(lambda x: jax.lax.fori_loop(0, 20, lambda i, y: jnp.tanh(y @ y), x).sum())
    x = jnp.ones((128, 128)) * 0.01
    compiled = f.lower(x).compile()
    compiled(x).block_until_ready()
    step = lambda state, i: (state, compiled(x))
    assert profiling.trace(step, None, 3, sys.argv[1])[1] is None
    module, times, counts, source = profiling.op_times(sys.argv[1])
    info = profiling.instructions(compiled.as_text())
    data = jax.profiler.ProfileData.from_file(profiling._newest(sys.argv[1]))
    inclusive = sum(e.duration_ns * 1e-9 for p in data.planes for l in p.lines for e in l.events
                    if dict(e.stats).get("hlo_op") in times and info[dict(e.stats)["hlo_op"]][0] == "while")
    print(json.dumps({"kinds": {op: info[op][0] for op in times}, "times": times, "inclusive_while": inclusive,
                      "source": source, "table": profiling.summary(sys.argv[1], compiled.as_text(), 3)}))
  """
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.splitlines()[-1])
  loops = [op for op, kind in r["kinds"].items() if kind == "while"]
  assert len(loops) == 1 and r["source"].startswith("host")
  # The body's 20 matmuls ran inside the loop's span and keep their time: the loop's own is a sliver of the span.
  assert 0 < r["times"][loops[0]] < 0.2 * r["inclusive_while"]
  assert sum(t for op, t in r["times"].items() if "dot" in r["kinds"][op]) > 0.5 * r["inclusive_while"]
  assert "while" in r["table"] and "dot" in r["table"]
