"""Where a compiled step spends its time: a profiler trace of a few steps, summed per HLO instruction and per kind
of work (`python -m uda_jax.bench --profile DIR`; the trace itself opens in TensorBoard's or XProf's viewer).

Each event the runtime records for an HLO instruction (a GPU kernel, a CPU thunk; its `hlo_op` stat) is added to
that instruction, and the instruction is classed by the compiled HLO: its opcode, a fusion's kind (kLoop, kInput,
kOutput, kCustom), or a custom call's target (cuDNN convolutions, cuBLAS GEMMs, uda_jax's CPU kernels). On a GPU
the times are kernel times on the device; on a CPU they are thunk times, which need XLA_FLAGS
--xla_cpu_enable_xprof_traceme=true (CPU_FLAGS, set by the benchmark before JAX starts) and which overlap when
XLA runs thunks concurrently, so there they tell shares, not a sum of wall time.
"""

import collections
import glob
import os
import re

import jax

CPU_FLAGS = ("--xla_cpu_enable_xprof_traceme=true",)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_AGGREGATE_LINES = ("XLA Modules", "Steps", "XLA TraceMe", "Source code")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")


def trace(step, states, num_steps, log_dir):
  """Runs `step(states, i) -> (states, metrics)` `num_steps` times under the profiler; returns (states, None), or
  (states, why) when the profiler could not start or stop (no CUPTI, say): a benchmark keeps its timed figures
  and its states, which the steps may have donated."""
  try:
    jax.profiler.start_trace(log_dir)
  except Exception as e:  # pylint: disable=broad-except
    return states, f"the profiler did not start ({type(e).__name__}: {e})"
  why = None
  try:
    for i in range(num_steps):
      states, metrics = step(states, i)
      jax.block_until_ready(metrics)
  finally:
    try:
      jax.profiler.stop_trace()
    except Exception as e:  # pylint: disable=broad-except
      why = f"the profiler did not stop ({type(e).__name__}: {e})"
  return states, why


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (kind, op_name)} for every instruction of a compiled module's HLO text: kind is the
  opcode, 'fusion:<kind>' (with the backend's fusion kind in brackets where it names one, e.g. __triton_gemm,
  __cudnn$fusion, __ynn_fusion; '+dot' / '+convolution' when the fused computation holds one: a matmul fused
  with its elementwise neighbours) or
  'custom-call:<target>'; op_name the JAX source path of its metadata."""
  out, calls, computation = {}, {}, ""
  opcodes, nested = collections.defaultdict(set), collections.defaultdict(set)  # per computation
  for line in hlo_text.splitlines():
    header = _COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m or line.lstrip().startswith(("HloModule", "//")):
      continue
    rest = _skip_shape(m.group(2))
    opcode = re.match(r"([\w\-]+)\(", rest)
    if not opcode:
      continue
    kind = opcode.group(1)
    opcodes[computation].add(kind)
    if kind == "fusion":
      k = re.search(r"\bkind=(\w+)", rest)
      kind += f":{k.group(1)}" if k else ""
      b = re.search(r'"kind":"(__[^"]+)"', rest)  # the backend's own fusion: __triton_gemm, __cudnn$fusion, ...
      kind += f"({b.group(1)})" if b else ""
      c = re.search(r"\bcalls=%?([\w.\-]+)", rest)
      if c:
        calls[m.group(1)] = c.group(1)
        nested[computation].add(c.group(1))
    elif kind == "custom-call":
      t = re.search(r'custom_call_target="([^"]+)"', rest)
      kind += f":{t.group(1)}" if t else ""
    op = _OP_NAME.search(rest)
    out[m.group(1)] = (kind, op.group(1) if op else "")
  def all_opcodes(computation, seen=()):  # a fusion's own and its nested fusions'
    return opcodes[computation].union(*(all_opcodes(c, (*seen, computation)) for c in nested[computation]
                                        if c not in seen))

  for name, called in calls.items():
    heavy = [k for k in ("dot", "convolution") if k in all_opcodes(called)]
    if heavy:
      out[name] = (out[name][0] + "+" + heavy[0], out[name][1])
  return out


def _skip_shape(text: str) -> str:
  """`text` after its leading shape: one token, or a parenthesised tuple of shapes."""
  if not text.startswith("("):
    return text.split(" ", 1)[1] if " " in text else ""
  depth = 0
  for i, ch in enumerate(text):
    depth += {"(": 1, ")": -1}.get(ch, 0)
    if depth == 0:
      return text[i + 1:].lstrip()
  return ""


def op_times(log_dir: str) -> tuple[str, dict[str, float], dict[str, int], str]:
  """(module, {hlo_op: seconds}, {hlo_op: events}, whose events) of the newest trace under `log_dir`, for the HLO
  module that took the most time there (the step, not the small programs around it): the device's op events when
  the trace has any (GPU, TPU: the host's launch events carry hlo_op too), else the host's (CPU thunks). Self
  time: an event nested in another on its line (a while loop's body in the loop) is taken out of its parent's."""
  data = jax.profiler.ProfileData.from_file(_newest(log_dir))
  device = [p for p in data.planes if p.name.startswith("/device:")]
  lines = [l for p in device or data.planes for l in p.lines]
  ops = [l for l in lines if l.name == "XLA Ops"]  # TPU: beside it, "XLA Modules" and "Steps" span the same time
  lines = ops or [l for l in lines if l.name not in _AGGREGATE_LINES and not l.name.startswith("Framework")]
  times, counts = collections.defaultdict(float), collections.Counter()
  for line in lines:
    for key, seconds in _self_times(line.events):
      times[key] += seconds
      counts[key] += 1
  if not times and device:  # a runtime that does not tag its events: each device event by its own (kernel) name
    for line in lines:
      for event in line.events:
        times[("", event.name)] += event.duration_ns * 1e-9
        counts[("", event.name)] += 1
  if not times:
    return "", {}, {}, ""
  per_module = collections.defaultdict(float)
  for (module, _), t in times.items():
    per_module[module] += t
  module = max(per_module, key=per_module.get)
  return (module, {op: t for (m, op), t in times.items() if m == module},
          {op: c for (m, op), c in counts.items() if m == module},
          "device events" if device else "host thunk events, overlapping where thunks ran concurrently")


def _newest(log_dir: str) -> str:
  files = sorted(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no *.xplane.pb under {log_dir}: the profiler wrote no trace")
  return files[-1]


def _self_times(events):
  """((module, hlo_op), seconds) per tagged event of one line (one thread or stream), less the time of the
  tagged events nested in it."""
  tagged = []
  for event in events:
    stats = dict(event.stats)
    if "hlo_op" in stats:
      tagged.append((event.start_ns, event.end_ns, (str(stats.get("hlo_module", "")), str(stats["hlo_op"]))))
  tagged.sort(key=lambda e: (e[0], -e[1]))
  out, stack = [], []  # stack: [end_ns, key, self ns] of the open events
  for start, end, key in tagged:
    while stack and stack[-1][0] <= start:
      _, k, ns = stack.pop()
      out.append((k, ns * 1e-9))
    if stack:
      stack[-1][2] -= min(end, stack[-1][0]) - start
    stack.append([end, key, end - start])
  out.extend((k, ns * 1e-9) for _, k, ns in reversed(stack))
  return out


def profile(step, states, num_steps, log_dir, hlo_text, top=25):
  """(states, summary table) of `num_steps` traced steps; the table says why when there is none (a step that
  fails under the profiler, out of memory say, included: the caller has its timed figures already)."""
  try:
    states, why = trace(step, states, num_steps, log_dir)
  except Exception as e:  # pylint: disable=broad-except
    return states, f"profile: not taken: a traced step failed ({type(e).__name__}: {str(e)[:300]})"
  if why:
    return states, f"profile: not taken: {why}"
  try:
    return states, summary(log_dir, hlo_text, num_steps, top)
  except Exception as e:  # pylint: disable=broad-except  # a trace format this reader does not know
    return states, f"profile: trace in {log_dir}, not summarised ({type(e).__name__}: {e})"


def summary(log_dir: str, hlo_text: str, num_steps: int, top: int = 25) -> str:
  """A table per kind of work and of the `top` instructions, in milliseconds per step."""
  module, times, counts, source = op_times(log_dir)
  if not times:
    return (f"profile: no HLO op events in the trace under {log_dir} (on a CPU set XLA_FLAGS="
            f"{' '.join(CPU_FLAGS)} before JAX starts; on a GPU the profiler needs CUPTI)")
  info = instructions(hlo_text)
  total = sum(times.values())
  per_kind = collections.defaultdict(float)
  for op, t in times.items():
    per_kind[info.get(op, ("?", ""))[0]] += t
  lines = [f"profile: module {module}, {len(times)} HLO ops, {1e3 * total / num_steps:.1f} ms of op time per step "
           f"({source}; trace: {log_dir})", f"{'ms/step':>9} {'share':>6}  kind"]
  for kind, t in sorted(per_kind.items(), key=lambda kv: -kv[1]):
    lines.append(f"{1e3 * t / num_steps:9.2f} {t / total:6.1%}  {kind}")
  lines.append(f"{'ms/step':>9} {'share':>6} {'events':>6}  op  kind  source")
  for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
    kind, source = info.get(op, ("?", ""))
    lines.append(f"{1e3 * t / num_steps:9.2f} {t / total:6.1%} {counts[op] / num_steps:6.0f}  {op}  {kind}  "
                 f"{source[-120:]}")
  return "\n".join(lines)
