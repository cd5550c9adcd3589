"""`jaxmia.study_archive`: which files a study archive keeps, mirroring on repeated packs, unpack never
overwriting a workdir's own state."""
import pathlib

import pytest

from jaxmia import model_store, study_archive


def _write(root: pathlib.Path, relative: str, text: str = "x") -> None:
  path = root / relative
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _tree(root: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path):
  root = tmp_path / "work"
  _write(root, f"seed_0/target/model/{model_store.INFO_FILE}", "{}")
  _write(root, "seed_0/target/model/variables/params", "weights")
  _write(root, "seed_0/target/checkpoints/30/state", "exported: not needed")
  _write(root, "seed_0/target/events.out.tfevents.123.host", "tensorboard")
  _write(root, "seed_0/target/run.json", "record")
  _write(root, "gan/checkpoints/400/state", "unfinished: needed to resume")
  _write(root, "gan/model/variables/params", "being exported, no info file yet")
  _write(root, "seed_0/attack/rlb/batch_00000.partial.npz", "partial")
  _write(root, "seed_0/attack/latents.npz.tmp", "being written")
  return root


def test_pack_keeps_what_a_rerun_needs(workdir, tmp_path):
  counts = study_archive.pack(workdir, tmp_path / "archive")
  assert sorted(_tree(tmp_path / "archive")) == [
      "gan/checkpoints/400/state", "gan/model/variables/params", "seed_0/attack/rlb/batch_00000.partial.npz",
      f"seed_0/target/model/{model_store.INFO_FILE}", "seed_0/target/model/variables/params", "seed_0/target/run.json"]
  assert counts["files"] == counts["copied"] == 6 and counts["removed"] == 0


def test_repacking_mirrors_the_workdir(workdir, tmp_path):
  archive = tmp_path / "archive"
  study_archive.pack(workdir, archive)
  (workdir / "seed_0/attack/rlb/batch_00000.partial.npz").unlink()  # the batch finished
  _write(workdir, "seed_0/attack/rlb/batch_00000.npz", "done")
  _write(workdir, f"gan/model/{model_store.INFO_FILE}", "{}")      # the GAN's export completed
  _write(workdir, "seed_0/target/run.json", "record, updated")
  counts = study_archive.pack(workdir, archive)
  tree = _tree(archive)
  assert "seed_0/attack/rlb/batch_00000.partial.npz" not in tree and tree["seed_0/attack/rlb/batch_00000.npz"] == "done"
  assert not any(k.startswith("gan/checkpoints") for k in tree)  # exported now: its checkpoints are dropped
  assert not (archive / "gan/checkpoints").exists()  # emptied folders go too
  assert tree["seed_0/target/run.json"] == "record, updated"
  assert counts == {"files": 6, "copied": 3, "removed": 2, "bytes": sum(len(v) for v in tree.values())}
  assert study_archive.pack(workdir, archive)["copied"] == 0  # nothing changed


def test_unpack_fills_a_fresh_workdir_and_never_overwrites(workdir, tmp_path):
  archive = tmp_path / "archive"
  study_archive.pack(workdir, archive)
  fresh = tmp_path / "fresh"
  assert study_archive.unpack(archive, fresh) == {"files": 6, "copied": 6, "kept": 0}
  assert _tree(fresh) == _tree(archive)
  _write(fresh, "seed_0/target/run.json", "this machine's newer record")
  (fresh / "seed_0/target/model/variables/params").unlink()
  assert study_archive.unpack(archive, fresh) == {"files": 6, "copied": 1, "kept": 5}
  assert _tree(fresh)["seed_0/target/run.json"] == "this machine's newer record"
  assert _tree(fresh)["seed_0/target/model/variables/params"] == "weights"


def test_bad_folders_and_oversized_files_are_refused(workdir, tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="--workdir=.* is not a folder"):
    study_archive.pack(tmp_path / "absent", tmp_path / "archive")
  with pytest.raises(ValueError, match="--archive=.* is not a folder"):
    study_archive.unpack(tmp_path / "absent", workdir)
  monkeypatch.setattr(study_archive, "MAX_FILE_BYTES", 5)
  with pytest.raises(ValueError, match="too large to commit"):
    study_archive.pack(workdir, tmp_path / "archive")
  assert not (tmp_path / "archive").exists()  # refused before anything was copied


def test_a_gan_s_checkpoints_go_once_both_networks_are_exported(tmp_path):
  root = tmp_path / "work"
  _write(root, "gan_gmi/checkpoints/7800/state", "needed until both networks are exported")
  _write(root, f"gan_gmi/generator/{model_store.INFO_FILE}", "{}")
  assert "gan_gmi/checkpoints/7800/state" in map(str, study_archive.archived_files(root))
  _write(root, f"gan_gmi/discriminator/{model_store.INFO_FILE}", "{}")
  assert "gan_gmi/checkpoints/7800/state" not in map(str, study_archive.archived_files(root))


def test_records_name_no_machine_s_folders_and_point_at_the_unpacked_workdir(tmp_path):
  root = tmp_path / "work"
  absolute = str(root.resolve())
  record = f'{{"target": "{absolute}/seed_0/target/model", "other": "{absolute}_2/x", "outside": "/data/x"}}'
  _write(root, "seed_0/attack/summary.json", record)
  _write(root, "seed_0/attack/weights.npz", absolute)  # not a record: bytes kept as they are
  archive = tmp_path / "archive"
  study_archive.pack(root, archive)
  packed = _tree(archive)
  assert packed["seed_0/attack/summary.json"] == (
      f'{{"target": "<workdir>/seed_0/target/model", "other": "{absolute}_2/x", "outside": "/data/x"}}')
  assert packed["seed_0/attack/weights.npz"] == absolute
  assert study_archive.pack(root, archive)["copied"] == 0  # the rewritten record counts as unchanged
  fresh = tmp_path / "elsewhere" / "fresh"
  study_archive.unpack(archive, fresh)
  assert _tree(fresh)["seed_0/attack/summary.json"] == record.replace(absolute + "/", str(fresh.resolve()) + "/")
