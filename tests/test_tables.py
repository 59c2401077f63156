"""uda_jax.tools.tables: listing, the unknown-table error, collecting and running rows (with a fake runner)."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

import adaptsegnet
from uda_jax import rows
from uda_jax.errors import UserError
from uda_jax.tools import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/adaptsegnet.py"


def test_every_row_resolves_to_known_presets():
  for row in adaptsegnet.ROWS:
    for stage in row.stages:
      adaptsegnet.get_config(stage.presets)  # raises on an unknown preset
  by_table = {}
  for row in adaptsegnet.ROWS:
    by_table.setdefault(row.table, []).append(row)
  assert {r.name: r.published for r in by_table["1"]}["Ours (multi-level)"] == 42.4
  assert {r.name: r.published for r in by_table["7"]}["LS-GAN"] == 44.1
  assert all(r.metric == "mIoU13" for r in by_table["4"] + by_table["5"])
  assert len(by_table["6"]) == 12 and len(by_table["3"]) == 8


def test_list_prints_rows_and_commands(capsys):
  tables.main([CONFIG, "--table", "1", "--root", "R"])
  out = capsys.readouterr().out
  assert "Table 1  Ours (multi-level)  published mIoU 42.4" in out
  assert ("python -m uda_jax.main --config configs/adaptsegnet.py:multi_level --workdir R/multi_level "
          "--mode train") in out
  assert "--config configs/adaptsegnet.py:source_only --workdir R/source_only" in out
  assert "Table 3" not in out


def test_unknown_table_is_one_line_error():
  proc = subprocess.run([sys.executable, "-m", "uda_jax.tools.tables", CONFIG, "--table", "99"], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 2
  assert "unknown table '99'" in proc.stderr and "known tables: 1, 2, 3, 4, 5, 6, 7, 8, 9" in proc.stderr
  assert "Traceback" not in proc.stderr + proc.stdout


def test_config_without_rows(tmp_path, capsys):
  (tmp_path / "plain.py").write_text("def get_config(arg=None):\n  return None\n")
  with pytest.raises(SystemExit) as e:
    tables.main([str(tmp_path / "plain.py")])
  assert e.value.code == 2 and "lists no paper rows" in capsys.readouterr().err


def _summary(mIoU, **extra):
  return json.dumps({"step": 10, "per_class": {}, "mIoU": mIoU, "extra": extra, "pixel_acc": 90.0})


def test_collect(tmp_path, capsys):
  root = tmp_path / "runs"
  for slug, text in (("synthia_multi_level", _summary(40.0, mIoU13=47.04)),
                     ("synthia_single_level", _summary(39.0, mIoU13=45.0))):
    (root / slug).mkdir(parents=True)
    (root / slug / "eval_final.json").write_text(text)
  tables.main([CONFIG, "--table", "4", "--collect", str(root)])
  out = capsys.readouterr().out
  assert "| 4 | Ours (multi-level) | mIoU13 | 46.7 | 47.0 | +0.3 |" in out
  assert "| 4 | Ours (single-level) | mIoU13 | 45.9 | 45.0 | -0.9 |" in out
  assert "| 4 | Ours (feature) | mIoU13 | 40.8 | - | - |" in out  # not run
  assert (root / "tables_adaptsegnet_4.md").read_text() in out
  with open(root / "tables_adaptsegnet_4.csv") as f:
    records = list(csv.reader(f))
  assert records[0] == ["table", "row", "metric", "published", "ours", "difference"]
  assert ["4", "Ours (multi-level)", "mIoU13", "46.7", "47.0", "+0.3"] in records
  assert ["4", "Baseline (ResNet)", "mIoU13", "38.6", "-", "-"] in records
  assert len(records) == 1 + 5


def test_collect_mIoU_of_a_shared_stage(tmp_path):
  # Table 8 prints both means of one run.
  (tmp_path / "synthia_lsgan").mkdir()
  (tmp_path / "synthia_lsgan" / "eval_final.json").write_text(_summary(41.25, mIoU13=47.6))
  picked = tables.select(adaptsegnet.ROWS, "8", CONFIG)
  records = tables.collect(tables.plan(CONFIG, picked, str(tmp_path)))
  assert ["8", "LS-GAN", "mIoU", "40.8", "41.2", "+0.4"] in records  # 41.25 prints as 41.2
  assert ["8", "LS-GAN", "mIoU13", "47.6", "47.6", "+0.0"] in records


FAKE_CONFIG = """
from uda_jax import rows
import fake_sibling  # a config may import a module beside it

first = rows.Stage("first", "a")  # key "first", workdir ROOT/a
ROWS = (
    rows.Row("1", "A", 1.0, (first, rows.train("a,b", init_from="{first}"))),
    rows.Row("1", "B", 2.0, (first, rows.train("c", init_from="{first}/x", seed=fake_sibling.SEED))),
    rows.Row("2", "P", 3.0, (first,
                             rows.Stage("pseudo", "a", "predict", (("predict.output_dir", "{pseudo}"),),
                                        workdir="{first}"),
                             rows.train("d", data__source="{pseudo}"),
                             rows.Stage("mst", "d,mst", "eval", workdir="{d}"))),
)
"""


class FakeRunner:
  """Records each command and writes what the real stage would: eval_final.json, manifest.json, eval_*.json."""

  def __init__(self):
    self.calls = []

  def __call__(self, argv, log_path):
    self.calls.append(argv)
    flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--config."))
    workdir = argv[argv.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    mode = argv[argv.index("--mode") + 1]
    if mode == "train":
      with open(os.path.join(workdir, "eval_final.json"), "w") as f:
        f.write(_summary(10.0 + len(self.calls)))
    elif mode == "predict":
      out = flags["config.predict.output_dir"]
      os.makedirs(out, exist_ok=True)
      with open(os.path.join(out, "manifest.json"), "w") as f:
        f.write("{}")
    else:
      with open(os.path.join(workdir, "eval_latest_step7.json"), "w") as f:
        f.write(_summary(55.5))
    return 0


def _fake_config(tmp_path):
  (tmp_path / "fake_sibling.py").write_text("SEED = 3\n")
  (tmp_path / "fake_cfg.py").write_text(textwrap.dedent(FAKE_CONFIG))
  return str(tmp_path / "fake_cfg.py")


def test_run_order_substitution_resume_and_shared_stage(tmp_path, capsys):
  config = _fake_config(tmp_path)
  fake_rows = tables.load_rows(config)
  root = str(tmp_path / "runs")
  runner = FakeRunner()
  tables.run_rows(config, fake_rows, root, ("--config.train.num_steps=5",), runner=runner)
  assert [(c[c.index("--config") + 1].split(":")[1], c[c.index("--mode") + 1]) for c in runner.calls] == [
      ("a", "train"), ("a,b", "train"), ("c", "train"), ("a", "predict"), ("d", "train"), ("d,mst", "eval")]
  first, ab, c, predict, d, mst = runner.calls
  assert first == ["python", "-m", "uda_jax.main", "--config", f"{config}:a", "--workdir", f"{root}/a",
                   "--mode", "train", "--config.train.num_steps=5"]
  assert f"--config.init_from={root}/a" in ab and ab[ab.index("--workdir") + 1] == f"{root}/a_b"
  assert f"--config.init_from={root}/a/x" in c and "--config.seed=3" in c
  # The predict stage runs in the trained stage's directory, writing into its own.
  assert predict[predict.index("--workdir") + 1] == f"{root}/a"
  assert f"--config.predict.output_dir={root}/a+predict" in predict
  assert f"--config.data.source={root}/a+predict" in d
  assert mst[mst.index("--workdir") + 1] == f"{root}/d"
  # The eval stage's result is kept in its own directory, where --collect reads it.
  records = tables.collect(tables.plan(config, fake_rows, root))
  assert [r[4] for r in records] == ["12.0", "13.0", "55.5"]

  runner2 = FakeRunner()
  tables.run_rows(config, fake_rows, root, runner=runner2)
  assert not runner2.calls  # everything is done
  os.remove(os.path.join(root, "d", "eval_final.json"))
  tables.run_rows(config, fake_rows, root, runner=runner2)
  assert [c[c.index("--config") + 1] for c in runner2.calls] == [f"{config}:d"]  # only the unfinished stage
  assert "done: a" in capsys.readouterr().out


def test_dry_run_and_failure(tmp_path, capsys):
  config = _fake_config(tmp_path)
  fake_rows = tables.select(tables.load_rows(config), "1", config)
  root = str(tmp_path / "runs")
  tables.run_rows(config, fake_rows, root, runner=pytest.fail, dry_run=True)
  out = capsys.readouterr().out
  assert out.count("would run:") == 3 and not os.path.exists(root)
  with pytest.raises(UserError, match=f"stage a of table 1 row 'A' failed; see {root}/a.log"):
    tables.run_rows(config, fake_rows, root, runner=lambda argv, log: 1)


def test_one_slug_one_command():
  clash = (rows.Row("1", "A", 1.0, (rows.train("s"), rows.train("t", init_from="{s}"))),
           rows.Row("1", "B", 1.0, (rows.train("u"), rows.train("t", init_from="{u}"))))
  with pytest.raises(UserError, match="stage t means two commands"):
    tables.plan(CONFIG, clash, "R")


def test_default_runner_logs_a_failing_stage(tmp_path, monkeypatch):
  # A real `python -m uda_jax.main` that stops at once (an unknown preset): its error lands in the stage's log.
  monkeypatch.chdir(ROOT)
  bad = (rows.Row("1", "bad", 1.0, (rows.train("toy,no_such_preset"),)),)
  with pytest.raises(UserError, match="see .*toy_no_such_preset.log"):
    tables.run_rows(CONFIG, bad, str(tmp_path))
  assert "unknown preset(s) 'no_such_preset'" in (tmp_path / "toy_no_such_preset.log").read_text()
