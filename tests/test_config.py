"""Study configs: presets load, every user mistake is one clear error, overrides apply."""

import re

import pytest

from widthlab import WidthlabError
from widthlab.presets import list_presets
from widthlab.study.catalog import describe_presets
from widthlab.study.config import load_config
from widthlab.study.runner import plan_runs


def test_presets_load_with_the_paper_defaults():
    assert {"mlp-10d", "mlp-10kd", "mlp-10kd-optimizers"} <= set(list_presets())
    cfg = load_config("mlp-10d")
    assert cfg.grid.widths == (0.25, 0.5, 1.0, 2.0, 4.0) and cfg.grid.replicates == 3
    assert cfg.train.optimizer == "momentum" and cfg.train.lr == 0.01 and cfg.train.batch_size == 32
    assert cfg.train.epochs == 50 and cfg.model.init == "normal"
    assert sorted(cfg.grid.variants) == ["sigma=0.001", "sigma=0.01", "sigma=0.1"]
    assert load_config("mlp-10kd").data.options["input_dim"] == 10_000
    opt = load_config("mlp-10kd-optimizers")
    assert {opt.variant_sections(v)["train"].optimizer for v in opt.grid.variants} == {"momentum", "sgd", "adam"}
    assert {row["figure"] for row in describe_presets()} >= {"C5", "C6", "C12"}


def test_grid_is_variants_times_widths_times_replicates_with_seed_per_replicate():
    specs = plan_runs(load_config("mlp-10d", ["grid.select=null"]))
    assert len(specs) == 45 and len({s.run_id for s in specs}) == 45
    sigmas = {s.variant: s.config.model.sigma for s in specs}
    assert sigmas == {"sigma=0.001": 0.001, "sigma=0.01": 0.01, "sigma=0.1": 0.1}
    assert all(s.config.train.seed == s.replicate for s in specs)


def test_mlp_presets_select_the_learning_rate_per_cell():
    specs = plan_runs(load_config("mlp-10d"))
    assert len(specs) == 45 * 4 and len({s.cell for s in specs}) == 45
    assert {s.config.train.lr for s in specs} == {1, 0.1, 0.01, 0.001}
    assert not any(s.measure for s in specs)  # only the chosen candidate is measured


def test_set_overrides_parse_yaml_values():
    cfg = load_config("mlp-10d", ["grid.replicates=1", "grid.widths=[0.5, 1]", "train.optimizer=adam"])
    assert cfg.grid.replicates == 1 and cfg.grid.widths == (0.5, 1.0) and cfg.train.optimizer == "adam"


@pytest.mark.parametrize("override,match", [
    ("colour=red", "unknown key 'colour'"),
    ("train.learning_rate=0.1", "unknown key 'train.learning_rate'"),
    ("train.epochs=ten", "train.epochs"),
    ("grid.widths=[0, 1]", "width must be a positive number"),
    ("grid.widths=[-0.5]", "width must be a positive number"),
    ("grid.replicates=0", "grid.replicates"),
    ("model.name=resnet9000", "unknown model 'resnet9000'"),
    ("model.depth=3", r"unknown option\(s\) 'depth'"),
    ("model.width=2", "set by the study"),
    ("data.name=imagenet21k", "unknown data set 'imagenet21k'"),
    ("measure.perturbations=[zap]", "unknown perturbation"),
    ("measure.levels=[0.5, 1]", "measure: levels of 'zero' must start at 0"),
    ("measure.levels=1", "levels of 'zero' must be at least 2"),
    ("measure.levels=true", "levels must be a count, a list or a mapping of them, got True"),
    ("measure.levels=[0, 0.5, 2]", "levels of 'zero' must be at least two increasing shares in \\[0, 1\\]"),
    ("measure.levels={act_noise: 5}", "levels given for \\['act_noise'\\], which are not among the perturbations"),
    ("grid.variants={bad: {optimizer: adam}}", "variant 'bad' overrides"),
    ("grid.variants={bad: {train: {optimizer: lbfgs}}}", "variant 'bad': train.optimizer"),
    ("nokey", "--set expects key=value"),
    ("grid.widths=0.5,1", re.escape("valid tuple (got '0.5,1'); write a list in brackets, quoted for the shell: "
                                    "--set 'grid.widths=[0.5, 1]'")),
])
def test_bad_config_is_one_clear_error(override, match):
    with pytest.raises(WidthlabError, match=match):
        load_config("mlp-10d", [override])


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(WidthlabError, match="not valid YAML"):
        load_config(str(path))


def test_unknown_preset_or_missing_file():
    with pytest.raises(WidthlabError, match="neither a preset"):
        load_config("mlp-3d")
    with pytest.raises(WidthlabError, match="does not exist"):
        load_config("/nonexistent/study.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(WidthlabError, match="expected a mapping"):
        load_config(str(path))


def test_levels_follow_each_perturbations_range():
    """An int n spreads n levels over each perturbation's own range: shares 0-1, noise 0-2σ (the Python
    defaults); a mapping sets them per perturbation."""
    from widthlab.measure.perturbations import NOISE_LEVELS, SHARE_LEVELS
    from widthlab.study.config import MeasureSpec

    spec = MeasureSpec(perturbations=("zero", "act_noise"), levels=11)
    assert spec.level_sets() == {"zero": SHARE_LEVELS.tolist(), "act_noise": NOISE_LEVELS.tolist()}
    mixed = MeasureSpec(perturbations=("zero", "weight_noise"), levels={"weight_noise": [0, 1, 4]})
    assert mixed.level_sets() == {"zero": SHARE_LEVELS.tolist(), "weight_noise": [0.0, 1.0, 4.0]}
    same = MeasureSpec(perturbations=("mean", "act_noise"), levels=[0, 0.5, 1])
    assert same.level_sets() == {"mean": [0, 0.5, 1], "act_noise": [0, 0.5, 1]}
    assert MeasureSpec(levels=3).level_sets() == {"zero": [0.0, 0.5, 1.0]}


def test_a_study_name_may_take_200_bytes_not_201(tmp_path):
    name = "é" * 99 + "ab"  # 200 bytes in UTF-8, 101 characters
    assert load_config("mlp-10d", [f"name={name}"]).name == name
    with pytest.raises(WidthlabError, match="study name is 201 bytes long; at most 200"):
        load_config("mlp-10d", [f"name={name}c"])
    (tmp_path / name).mkdir()  # the limit leaves room: the longest name is a folder, with a suffix added
    (tmp_path / f"{name}.backup-2024").mkdir()
