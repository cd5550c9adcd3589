"""Config files load from any working directory, and `python -m jaxmia.config show` lists each field with its
value and the comments of the lines that set it."""
import pathlib
import subprocess
import sys

import ml_collections

from jaxmia import config as config_files

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Parses --config as every program does (config_flags), with an override, and prints two fields.
_PARSE = """
import sys
from absl import flags
from ml_collections import config_flags
config_flags.DEFINE_config_file("config", lock_config=True)
sys.argv = ["prog", "--config=" + sys.argv[1], "--config.attack.num_steps=7"]  # overrides are read from sys.argv
flags.FLAGS(sys.argv)
config = flags.FLAGS.config
print(config.target, config.attack.num_steps, config.candidates.truncation_psi, config.targets)
"""


def _line_of(path: pathlib.Path, text: str) -> int:
  """1-based number of the only line of `path` containing `text`."""
  (line,) = [i for i, row in enumerate(path.read_text().splitlines(), 1) if text in row]
  return line


def test_a_config_loads_from_another_working_directory(tmp_path):
  """attack_digits.py builds on attack_facescrub_ffhq.py; from a folder where `configs` is not importable
  (the repository is not on sys.path) the program's flag parsing still gets its values and the override."""
  result = subprocess.run([sys.executable, "-c", _PARSE, f"{CONFIGS / 'attack_digits.py'}:smoke"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["runs/digits/model", "7", "1.0", "2"]


def test_a_copied_config_folder_uses_its_own_edited_files(tmp_path):
  """Neighbours are loaded by path: a copy of configs/ with an edited base file gives the edited value."""
  copy = tmp_path / "my_configs"
  copy.mkdir()
  for name in ("attack_digits.py", "attack_facescrub_ffhq.py"):
    (copy / name).write_text((CONFIGS / name).read_text())
  base = copy / "attack_facescrub_ffhq.py"
  base.write_text(base.read_text().replace("config.seed = 42", "config.seed = 1234"))
  assert config_files.load(f"{copy / 'attack_digits.py'}:smoke").seed == 1234
  assert config_files.load(f"{CONFIGS / 'attack_digits.py'}:smoke").seed == 42


def test_load_passes_the_variant_like_config_flags():
  assert config_files.load(f"{CONFIGS / 'digits.py'}:smoke").num_epochs == 2
  assert config_files.load(f"{CONFIGS / 'digits.py'}").num_epochs == 12


def test_show_lists_fields_values_and_their_comments(tmp_path):
  """From another directory: each field's value, then every line that set it (base file first, then the
  file and variant that changed it) with the comment there; a shared FieldReference is documented where it
  is made."""
  result = subprocess.run([sys.executable, "-m", "jaxmia.config", "show", f"{CONFIGS / 'digits.py'}:smoke"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  faces, digits = CONFIGS / "faces.py", CONFIGS / "digits.py"

  def block(field):
    start = lines.index(field)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("    ")), len(lines))
    return lines[start + 1:end]

  assert block("seed = 42") == [
      f"    {faces}:{_line_of(faces, 'config.seed = 42')}  root of every random choice: init, data order, "
      "augmentation, bottleneck noise"]
  assert block("augment.flip = False") == [
      f"    {faces}:{_line_of(faces, 'augment.flip = True')}  horizontal flip with probability 0.5",
      f"    {digits}:{_line_of(digits, 'config.augment.flip = False')}  mirrored digits are other digits"]
  # Set in the base, then by the full run, then by the smoke variant (no comment on that line).
  assert block("num_epochs = 2") == [
      f"    {faces}:{_line_of(faces, 'config.num_epochs = 100')}  training epochs (the last partial batch of "
      "each epoch is dropped)",
      f"    {digits}:{_line_of(digits, 'config.num_epochs = 12')}",
      f"    {digits}:{_line_of(digits, 'config.num_epochs = 2')}"]
  # The comment lines right above a statement document it too (joined, before a trailing comment).
  assert block("init_weights = ''") == [
      f"    {faces}:{_line_of(faces, 'config.init_weights =')}  ImageNet initialisation: a weights folder "
      "(jaxmia.model_store) or a torchvision .pth file; the head (`fc`) is always created fresh for the "
      "dataset's classes. '' = random initialisation.",
      f"    {digits}:{_line_of(digits, 'config.init_weights =')}  random initialisation (ImageNet features do "
      "not help at 32x32 grey)"]
  # Fields made by jaxmia code are documented from there.
  assert any("jaxmia/data/pipeline.py" in row and "keep only k training images per class" in row
             for row in block("dataset.samples_per_class = 16"))


def test_a_field_set_from_a_shared_reference_gets_the_comment_of_the_reference():
  path = CONFIGS / "attack_facescrub_ffhq.py"
  setitem = ml_collections.ConfigDict.__setitem__
  fields = {f.name: f for f in config_files.documented_fields(f"{path}:smoke")}
  (setting,) = fields["candidates.center_crop"].settings
  assert setting.line == _line_of(path, "config.candidates.center_crop = center_crop")
  assert "centre crop in generator pixels" in setting.comment
  assert fields["attack.num_steps"].value == 2
  assert ml_collections.ConfigDict.__setitem__ is setitem  # the recording is undone
