"""Paper table rows as data: what a method config's presets reproduce, with the published number.

A row is a chain of stages. Each stage is one `python -m uda_jax.main` command: a mode, the config's presets,
and overrides that may name another stage's output as `{stage}` (its workdir) or `{stage}/NAME`. A stage's
workdir is derived from its presets and mode only, so rows that share a stage (every FADA row of a table
starts from the same source-only run) share its run. `python -m uda_jax.tools.tables` lists, runs and
collects them.

A predict or eval stage usually reads another stage's checkpoint in place: `workdir='{adv}'` runs its command
with --workdir set to the adv stage's directory, while '{key}' of the stage itself still names its own
directory (e.g. predict.output_dir='{pseudo}'). Without `workdir`, a non-train stage runs in the directory of
the first other stage its overrides name, or else in its own.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Stage:
  key: str  # name other stages refer to: '{key}' in an override is replaced by this stage's workdir
  presets: str  # the config's presets, e.g. 'gta5,src'
  mode: str = "train"  # train | predict | eval
  overrides: tuple[tuple[str, str], ...] = ()  # (config field, value), values may hold '{key}'
  workdir: str = ""  # '{key}': run in that stage's directory (predict / eval of its checkpoint); '' see above

  @property
  def slug(self) -> str:
    """The stage's workdir name below the tables root."""
    extra = "".join(f"+{k.split('.')[-1]}={v}" for k, v in self.overrides if "{" not in v)
    return (self.presets.replace(",", "_") or "default") + extra + ("" if self.mode == "train" else f"+{self.mode}")


@dataclasses.dataclass(frozen=True)
class Row:
  table: str  # the paper's table number, e.g. '3'
  name: str  # the row as the paper names it
  published: float  # the paper's number for `metric`
  stages: tuple[Stage, ...]  # in order; the last one's evaluation is the row's result
  metric: str = "mIoU"  # summary key: 'mIoU', or an extra mean such as 'mIoU13'
  note: str = ""


def train(presets: str, **overrides) -> Stage:
  """A training stage keyed by its last preset (e.g. 'src', 'adv')."""
  return Stage(presets.split(",")[-1], presets, "train", tuple((k.replace("__", "."), str(v))
                                                                for k, v in overrides.items()))
