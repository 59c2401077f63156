"""Dense peak FLOP/s per device, for the benchmark's MFU.

Vendor figures without sparsity, per GPU or per TPU chip, in TFLOP/s:
- NVIDIA V100 (SXM2 / PCIe) and A100 datasheets; H100 SXM / PCIe datasheet (the sparse figures halved); H200
  datasheet (same tensor cores and clocks as H100 SXM). V100 has no bf16 or tf32 tensor cores.
- Google Cloud TPU system architecture pages: v4 275, v5e 197, v5p 459, v6e (Trillium) 918 bf16 TFLOP/s per
  chip. TPUs multiply float32 through bf16 passes (JAX's default precision is one pass), so float32 steps are
  counted against the bf16 peak.
"""

import re

# (pattern on jax's device_kind, name, {precision: TFLOP/s}); the first match wins, so specific names come first.
PEAKS = (
  (r"h200", "H200", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
  (r"h100.*pcie", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0}),
  (r"h100", "H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
  (r"a100", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
  (r"v100.*pcie", "V100 PCIe", {"fp32": 14.0}),
  (r"v100", "V100 SXM2", {"fp32": 15.7}),
  (r"tpu v4", "TPU v4", {"bf16": 275.0}),
  (r"tpu v5 ?lite|tpu v5e", "TPU v5e", {"bf16": 197.0}),
  (r"tpu v5p|tpu v5$", "TPU v5p", {"bf16": 459.0}),
  (r"tpu v6 ?lite|tpu v6e", "TPU v6e", {"bf16": 918.0}),
)
PRECISIONS = ("fp32", "tf32", "bf16")


def lookup(device_kind: str):
  """(name, {precision: TFLOP/s}) of a device kind, or None when it is not in the table (e.g. a CPU)."""
  kind = device_kind.lower()
  for pattern, name, peaks in PEAKS:
    if re.search(pattern, kind):
      return name, peaks
  return None


def default_precision(model_dtype: str, device_kind: str) -> str:
  """The precision a step of `model_dtype` runs its matmuls and convolutions at by default: bfloat16 -> bf16;
  float32 -> tf32 on GPUs with tf32 tensor cores (JAX's default matmul precision lets XLA use them), bf16 on
  TPUs (one bf16 pass), else fp32."""
  if model_dtype == "bfloat16":
    return "bf16"
  found = lookup(device_kind)
  if found and "tf32" in found[1]:
    return "tf32"
  if found and found[0].startswith("TPU"):
    return "bf16"
  return "fp32"


def peak_tflops(device_kind: str, precision: str):
  """Per-device dense peak of `precision`, or None if unknown; a TPU's only figure (bf16) stands for all."""
  found = lookup(device_kind)
  if found is None:
    return None
  name, peaks = found
  if precision in peaks:
    return peaks[precision]
  return peaks["bf16"] if name.startswith("TPU") else None
