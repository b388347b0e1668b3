"""A study folder is data: nothing in it runs code, and nothing widthlab writes leaves it.

Each test plants what a colleague's folder could hold (modules named like the ones widthlab imports, symbolic
links where widthlab writes, a model folder naming its own code, a name with a newline) and asserts that nothing ran
and nothing outside the folder changed.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from widthlab import files
from widthlab.cli import main
from widthlab.errors import WidthlabError
from widthlab.registry import resolve_callable
from widthlab.study.store import LOCK_NAME, Store, study_lock

from conftest import TINY_STUDY

SETS = [a for o in TINY_STUDY for a in ("--set", o)]
# Modules widthlab (or what it imports) loads while drawing a report: a file of that name in the folder a user
# runs `widthlab` in must never be imported instead.
SHADOWS = ("matplotlib", "scipy", "packaging", "html", "numpy", "pandas", "yaml", "sqlite3", "tqdm")


def _plant_modules(folder: Path, marker: Path) -> None:
    for name in SHADOWS:
        (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n")


def _snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder`, links as their target, files as their bytes."""
    seen = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        seen[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
    return seen


# 1. Code from the current folder ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_modules_in_the_folder_a_report_runs_in_never_run(study, tmp_path):
    """`cd STUDY && widthlab report .` (the console script; `python -m` puts the folder first on sys.path before
    any widthlab code runs, as Python does for every module it runs that way)."""
    marker = tmp_path / "PWNED"
    _plant_modules(study, marker)
    script = Path(sys.executable).with_name("widthlab")  # installed beside this Python by `pip install`
    done = subprocess.run([str(script), "report", ".", "--formats", "png"], cwd=study, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), f"ran from the study folder: {marker.read_text()}"
    assert (study / "summary.md").is_file() and (study / "figures" / "accuracy.png").is_file()


def test_a_users_module_in_the_current_folder_is_found_and_shadows_nothing(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    _plant_modules(tmp_path, marker)
    (tmp_path / "my_nets.py").write_text("import json, html\nimport my_helpers\n"
                                         "def build(width):\n    return my_helpers.double(width)\n")
    (tmp_path / "my_helpers.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.chdir(tmp_path)
    for name in ("my_nets", "my_helpers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    path = list(sys.path)
    assert resolve_callable("my_nets:build", "model")(3) == 6  # found in the folder, with its neighbour
    assert not marker.exists()  # its `import json, html` took the standard modules, not the folder's
    assert sys.path == path  # the folder was on sys.path only while that module imported


def test_a_users_module_named_like_an_installed_one_is_refused_not_guessed(tmp_path, monkeypatch):
    (tmp_path / "yaml.py").write_text("def build(width):\n    return width\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WidthlabError, match=r"module 'yaml' names both .*yaml.py.* and the installed .*rename"):
        resolve_callable("yaml:build", "model")


@pytest.mark.parametrize("spec", ["../evil:build", "os.path:", "a b:build", "my_nets:not-a-name"])
def test_module_function_names_that_are_not_python_names_are_refused(spec):
    with pytest.raises(WidthlabError, match="module"):
        resolve_callable(spec, "model")


# 2. Links inside a study folder ----------------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path):
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "accuracy.png").write_bytes(b"theirs")
    (folder / "bashrc").write_text("export PATH=/usr/bin\n")
    (folder / ".keep.999999.tmp.png").write_bytes(b"keep me")
    return folder


REPORT = ["report"]
RUN = ["run", "mlp-10d", "--quiet", *SETS]  # and --out STUDY


@pytest.mark.slow
@pytest.mark.parametrize("command, link, target", [
    (REPORT, "figures", "."), (REPORT, LOCK_NAME, "new"), (REPORT, "summary.md", "bashrc"),
    (REPORT, "widthlab.sqlite-wal", "new"), (REPORT, "checkpoints", "."),
    (RUN, "widthlab.log", "bashrc"), (RUN, "checkpoints", "."), (RUN, "figures", "."),
    (RUN, ".config.4194999.tmp.yaml", "bashrc")])
def test_nothing_is_written_or_cleaned_through_a_link_in_the_study(study, outside, command, link, target, capsys):
    if (study / link).is_dir():
        shutil.rmtree(study / link)
    (study / link).unlink(missing_ok=True)
    (study / link).symlink_to(outside / target)
    before = _snapshot(outside)
    assert main([*command, "--out", str(study)] if command is RUN else [*command, str(study)]) == 2
    err = capsys.readouterr().err
    assert f"{link}' is a symbolic link" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # summary.md not overwritten, bashrc not appended to, .keep.999999.tmp.png not deleted, new not created
    assert _snapshot(outside) == before and not (outside / "new").exists()


def test_a_report_drawn_elsewhere_reads_nothing_through_a_link(study, tmp_path, capsys):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY-----\n")
    (study / "config.yaml").unlink()
    (study / "config.yaml").symlink_to(secret)
    assert main(["report", str(study), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "config.yaml' is a symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere" / "summary.md").exists()


def test_stale_temp_cleanup_removes_only_regular_files_in_a_real_folder(tmp_path, outside):
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / ".accuracy.999999.tmp.png").write_bytes(b"stale")
    (folder / ".other.999998.tmp.png").symlink_to(outside / ".keep.999999.tmp.png")
    assert files.remove_stale_temps(folder) == [folder / ".accuracy.999999.tmp.png"]
    linked = tmp_path / "linked"
    linked.symlink_to(outside)
    assert files.remove_stale_temps(linked) == []
    assert (outside / ".keep.999999.tmp.png").read_bytes() == b"keep me"


def test_a_link_planted_at_the_temporary_name_is_replaced_not_followed(tmp_path, outside):
    path = tmp_path / "summary.md"
    files.temp_path(path).symlink_to(outside / "bashrc")
    files.write_text(path, "mine")
    assert path.read_text() == "mine" and not path.is_symlink()
    assert (outside / "bashrc").read_text() == "export PATH=/usr/bin\n"


def test_the_lock_and_the_store_refuse_links(tmp_path, outside):
    (tmp_path / LOCK_NAME).symlink_to(outside / "new")
    with pytest.raises(WidthlabError, match="is a symbolic link .*outside/new"):
        with study_lock(tmp_path):
            pass
    assert not (outside / "new").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "widthlab.sqlite").symlink_to(outside / "bashrc")
    with pytest.raises(WidthlabError, match="symbolic link"):
        Store(other, readonly=True)


def test_the_study_folder_itself_may_be_a_link(finished_study, tmp_path):
    real = tmp_path / "big-disk" / "study"
    shutil.copytree(finished_study, real)
    (tmp_path / "study").symlink_to(real)
    assert main(["report", str(tmp_path / "study"), "--formats", "png"]) == 0
    assert (real / "summary.md").is_file()


@pytest.mark.parametrize("name", ["x\ntouch /tmp/P #", "tab\there", "esc\x1b[31m", "cr\rline"])
def test_names_with_control_characters_are_refused(name, tmp_path, capsys):
    variants = json.dumps({name: {}})
    assert main(["run", "mlp-10d", "--dry-run", "--out", str(tmp_path / "s"), "--set",
                 f"grid.variants={variants}"]) == 2
    err = capsys.readouterr().err
    assert "control character" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "mlp-10d", "--dry-run", "--set", f"name={json.dumps(name)}"]) == 2
    err = capsys.readouterr().err  # a '/' in it is refused first, as any study name with one
    assert ("control character" in err or "plain name" in err) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_one_log_record_is_one_line(tmp_path):
    from widthlab.study.runner import _study_log, log

    with _study_log(tmp_path):
        log.info("corrupt image %s", "x.JPEG\n2026-01-01 INFO done: forged")
    lines = (tmp_path / "widthlab.log").read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("x.JPEG\\n2026-01-01 INFO done: forged")


# 4. HF model folders naming their own code -----------------------------------------------------------------------

@pytest.fixture
def remote_code_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "tiny-gpt2"
    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=40, n_positions=16)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    marker = tmp_path / "PWNED"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import GPT2Config, GPT2LMHeadModel\n"
                                    "class EvilConfig(GPT2Config):\n    model_type = 'evil'\n"
                                    "class EvilModel(GPT2LMHeadModel):\n    config_class = EvilConfig\n")
    data = json.loads((folder / "config.json").read_text())
    data.pop("model_type")
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(data))
    return folder, marker


def test_an_hf_folder_that_needs_its_own_code_is_refused(remote_code_folder, tmp_path, monkeypatch, capsys):
    from widthlab.external import load_model

    folder, marker = remote_code_folder
    monkeypatch.setattr("builtins.input", lambda prompt="": "y")  # a user answering transformers' prompt with y
    with pytest.raises(WidthlabError, match=r"needs code from its folder \(config.json auto_map names "
                                            r"'evil.EvilConfig'\).*--allow-code"):
        load_model(f"hf:{folder}")
    assert main(["analyze", f"hf:{folder}", "--data", str(tmp_path / "x.pt"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "needs code from its folder" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_allow_code_lets_a_trusted_hf_folder_run_its_code(remote_code_folder):
    from widthlab.external import load_model

    folder, marker = remote_code_folder
    try:
        load_model(f"hf:{folder}", allow_code=True)
    except WidthlabError:
        pass  # whether transformers then builds it is its business; the consent is what is tested
    assert marker.read_text() == "ran"
