"""config.init_from end to end: imported directories (with FADA's discriminator) and run workdirs into fresh states."""

import jax
import numpy as np
import pytest

import fada
from uda_jax import methods, parallel, steps
from uda_jax.checkpoint import Checkpoints
from uda_jax.errors import UserError
from uda_jax.methods.fada import DISC
from uda_jax.tools import import_torch as it
from uda_jax.tools.init_from import load_states

SHAPES = {"source_image": (1, 32, 64, 3), "source_label": (1, 32, 64), "target_image": (1, 32, 64, 3)}


def toy_fada(**model):
  c = fada.get_config("toy")
  c.model.width = 8
  c.disc.width = 16
  c.init_from_required = ""
  c.model.update(model)
  return c


@pytest.fixture(scope="module")
def fresh():
  """Fresh FADA states (seg + d_main) of the tiny toy config."""
  return steps.init_states(toy_fada(), methods.get("fada"), parallel.make_mesh(), SHAPES, pretrained=False)


def flat(tree):
  return {jax.tree_util.keystr(p): np.asarray(l) for p, l in jax.tree_util.tree_flatten_with_path(tree)[0]}


def perturbed(tree, seed):
  """Same paths, shapes and dtypes, values certainly different (float leaves shifted, int leaves + 3)."""
  rng = np.random.default_rng(seed)
  def f(x):
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
      return (x + 1.0 + rng.uniform(0.5, 1.0, x.shape)).astype(x.dtype)
    return x + 3
  return jax.tree.map(f, tree)


def assert_tree_equal(got, want):
  got, want = flat(got), flat(want)
  assert got.keys() == want.keys()
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v, err_msg=k)


def assert_tree_differs(got, other):
  got, other = flat(got), flat(other)
  assert all(not np.array_equal(got[k], v) for k, v in other.items())


def seg_variables(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


def test_imported_directory_restores_segmenter_and_fada_discriminator(fresh, tmp_path):
  seg = perturbed(seg_variables(fresh["seg"]), 1)
  d = perturbed(fresh[DISC].params, 2)
  it.save_variables({**seg, "discriminators": {DISC: d}}, str(tmp_path / "imported"))
  out = load_states(str(tmp_path / "imported"), fresh)
  assert set(out) == {"seg", DISC}
  assert_tree_equal(seg_variables(out["seg"]), seg)
  assert_tree_equal(out[DISC].params, d)
  for name in out:  # optimizers and step counters stay fresh; leaves placed like the fresh ones
    assert int(out[name].step) == 0
    assert_tree_equal(out[name].opt_state, fresh[name].opt_state)
    for a, b in zip(jax.tree.leaves(out[name].params), jax.tree.leaves(fresh[name].params)):
      assert a.sharding == b.sharding and a.dtype == b.dtype


def test_imported_discriminator_of_other_width_keeps_fresh_init(fresh, tmp_path):
  """As import_torch writes it from a FADA .pth whose model_D has ndf 8 (the config's disc.width is 16)."""
  cin, k = fresh[DISC].params["D_0"]["conv"]["kernel"].shape[2], fresh[DISC].params["cls1"]["conv"]["bias"].shape[0]
  rng = np.random.default_rng(0)
  model_d = {}
  for name, o, i in (("D.0", 8, cin), ("D.2", 4, 8), ("cls1", k, 4), ("cls2", k, 4)):
    model_d[f"model_D.{name}.weight"] = rng.standard_normal((o, i, 3, 3)).astype(np.float32)
    model_d[f"model_D.{name}.bias"] = rng.standard_normal(o).astype(np.float32)
  imported, rep = it.import_state_dict("deeplabv2_resnet101_tv", model_d, k, blocks=(1, 1, 1, 1))
  assert "width (disc.width) 8" in rep.discriminators[DISC]
  seg = perturbed(seg_variables(fresh["seg"]), 3)
  it.save_variables({**seg, "discriminators": imported["discriminators"]}, str(tmp_path / "imported"))
  out = load_states(str(tmp_path / "imported"), fresh)
  assert_tree_equal(seg_variables(out["seg"]), seg)
  assert_tree_equal(out[DISC].params, fresh[DISC].params)


def test_run_workdir_restores_params_not_optimizer(fresh, tmp_path):
  trained = {name: s.replace(step=s.step + 5, params=perturbed(s.params, i), opt_state=perturbed(s.opt_state, 9 + i),
                             batch_stats=perturbed(s.batch_stats, 20 + i))
             for i, (name, s) in enumerate(fresh.items())}
  trained = jax.device_put(trained, parallel.replicated(parallel.make_mesh()))
  ckpts = Checkpoints(str(tmp_path / "run"))
  ckpts.save(0, trained)
  ckpts.close()
  out = load_states(str(tmp_path / "run"), fresh)
  assert_tree_equal(seg_variables(out["seg"]), seg_variables(trained["seg"]))
  assert_tree_differs(out["seg"].params, fresh["seg"].params)
  assert_tree_equal(out[DISC].params, trained[DISC].params)
  assert_tree_differs(out[DISC].params, fresh[DISC].params)
  for name in out:
    assert int(out[name].step) == 0
    assert_tree_equal(out[name].opt_state, fresh[name].opt_state)


def test_other_num_classes_is_a_shape_mismatch(fresh, tmp_path):
  c = toy_fada(num_classes=fresh["seg"].params["layer6"]["conv2d_list_0"]["conv"]["bias"].shape[0] + 2)
  shapes = {k: (1, *v[1:]) for k, v in SHAPES.items()}
  other = jax.eval_shape(lambda: methods.get("fada").create_states(c, jax.random.key(0), shapes))
  seg = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), seg_variables(other["seg"]))
  it.save_variables(seg, str(tmp_path / "imported"))
  with pytest.raises(UserError, match="shape mismatch"):
    load_states(str(tmp_path / "imported"), fresh)


def test_init_from_a_directory_that_is_no_checkpoint_says_how_to_make_one(tmp_path):
  empty, junk = tmp_path / "empty", tmp_path / "junk"
  empty.mkdir()
  junk.mkdir()
  (junk / "weights.bin").write_bytes(b"\0" * 64)
  for d in (empty, junk):
    with pytest.raises(UserError, match=rf"init_from '{d}' is neither a training run's workdir .*"
                                        r"python -m uda_jax.tools.import_torch --arch ARCH"):
      load_states(str(d), {})
