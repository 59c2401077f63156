"""Dense peak FLOP/s per device, for the benchmark's MFU.

Vendor figures without sparsity (NVIDIA quotes tensor-core rates with 2:4 sparsity; the dense rate is half),
per GPU or per TPU chip, in TFLOP/s:
- NVIDIA Tesla V100 datasheet (SXM2 15.7, PCIe 14, V100S PCIe 16.4 fp32; no tf32 or bf16 tensor cores).
- NVIDIA A100 datasheet (40 GB and 80 GB, SXM and PCIe alike): fp32 19.5, tf32 156, bf16 312.
- NVIDIA H100 datasheet and H100 Tensor Core GPU Architecture whitepaper: SXM fp32 67, tf32 494.7, bf16 989.4;
  PCIe fp32 51, tf32 378, bf16 756; NVL fp32 60, tf32 417.5, bf16 835.5.
- NVIDIA H200 datasheet: SXM the same tensor-core rates as H100 SXM (same GH100 compute, more and faster
  memory), NVL the same as H100 NVL. A GH200's GPU matches "h200" and has the SXM rates too.
- Google Cloud TPU system architecture pages (per chip, bf16): v4 275, v5e 197, v5p 459, v6e (Trillium) 918.
  TPUs give one figure: their matrix units multiply bf16, and float32 runs as bf16 passes (one by default).
"""

import re

PRECISIONS = ("fp32", "tf32", "bf16")

# (pattern on jax's lower-cased device_kind, name, {precision: TFLOP/s}); the first match wins, so the more
# specific names (NVL, PCIe, V100S, "lite") come before the general ones.
PEAKS = (
  (r"h200.*nvl", "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
  (r"h200", "H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
  (r"h100.*nvl", "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
  (r"h100.*pcie", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
  (r"h100", "H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
  (r"a100", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
  (r"v100s", "V100S PCIe", {"fp32": 16.4}),
  (r"v100.*pcie", "V100 PCIe", {"fp32": 14.0}),
  (r"v100", "V100 SXM2", {"fp32": 15.7}),
  (r"tpu ?v4$", "TPU v4", {"bf16": 275.0}),  # not "TPU v4 lite" (v4i, an inference chip)
  (r"tpu ?v5 ?(lite|e)", "TPU v5e", {"bf16": 197.0}),
  (r"tpu ?v5 ?p|tpu ?v5$", "TPU v5p", {"bf16": 459.0}),  # JAX names a v5p chip "TPU v5"
  (r"tpu ?v6 ?(lite|e)", "TPU v6e", {"bf16": 918.0}),
)


def lookup(device_kind: str):
  """(name, {precision: TFLOP/s}) of a device kind, or None when it is not in the table (e.g. a CPU)."""
  kind = " ".join(device_kind.lower().split())
  for pattern, name, peaks in PEAKS:
    if re.search(pattern, kind):
      return name, peaks
  return None


def default_precision(model_dtype: str, device_kind: str, reduced_f32: bool = True) -> str:
  """The precision a step of `model_dtype` runs its convolutions and matmuls at.

  bfloat16 -> bf16. float32 with `reduced_f32` (JAX's default matmul precision, which lets XLA multiply float32
  on TF32 tensor cores on Ampere and later GPUs, and in one bf16 pass on TPUs) -> tf32 on GPUs that have it, bf16
  on TPUs; else (no tf32 tensor cores, or precision 'highest') fp32. float64 -> fp64, which has no figure here.
  """
  if model_dtype == "bfloat16":
    return "bf16"
  if model_dtype == "float64":
    return "fp64"
  found = lookup(device_kind)
  if found and "tf32" in found[1] and reduced_f32:
    return "tf32"
  if found and found[0].startswith("TPU") and reduced_f32:
    return "bf16"
  return "fp32"


def peak_tflops(device_kind: str, precision: str):
  """Per-device dense peak of `precision`, or None if unknown. A TPU's one (bf16) figure stands for fp32 and
  tf32 too: XLA runs them as bf16 passes, so a multi-pass step is counted against the bf16 peak."""
  found = lookup(device_kind)
  if found is None:
    return None
  name, peaks = found
  if precision in peaks:
    return peaks[precision]
  return peaks["bf16"] if name.startswith("TPU") and precision in PRECISIONS else None
