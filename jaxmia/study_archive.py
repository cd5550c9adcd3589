"""A study's finished work carried across machines: the workdir mirrored into a committed folder and back.

A study (`jaxmia.experiment`, `jaxmia.lowres_study`) outlasts the machine it starts on: its stages take hours
and its workdir is gone when the machine is. `pack` mirrors what a rerun needs into an archive folder (to be
committed with the study's recipe); `unpack` puts it into a fresh workdir, where the study resumes as if it had
never stopped (every stage is done when its output exists; attacks resume per batch, training from its
checkpoint).

    python -m jaxmia.study_archive --mode=pack --workdir=runs/numbers_study --archive=studies/numbers_study
    python -m jaxmia.study_archive --mode=unpack --workdir=runs/numbers_study --archive=studies/numbers_study

Left out (`skipped`): TensorBoard event files (what they hold is in the run's own JSON), files being written
(`*.tmp`), and the training checkpoints of networks that are already exported (`<dir>/checkpoints` beside a
complete `<dir>/model`, or a GAN's complete `<dir>/generator` and `<dir>/discriminator`): once the weights are
exported nothing resumes from them. The checkpoints of an unfinished training are kept, so it resumes where it was.

The programs record absolute paths (a run's inputs, its workdir) in their JSON, Markdown and text files. `pack`
writes the workdir's absolute path there as `<workdir>`, so that the committed files name no machine's folders,
and `unpack` writes the new workdir's absolute path in its place, so that the records point at the unpacked files.
"""
import pathlib
import re

from absl import flags, logging

from jaxmia import cli, model_store

MODES = ("pack", "unpack")
MAX_FILE_BYTES = 50 << 20  # a larger file is refused: it does not belong in a repository
WORKDIR_TOKEN = "<workdir>"
RECORD_SUFFIXES = (".json", ".md", ".txt")  # the files in which programs record paths


def _workdir_pattern(workdir: pathlib.Path) -> re.Pattern:
  """The workdir's absolute path where it is a whole path component (not `/runs/study` in `/runs/study_2`)."""
  return re.compile(re.escape(str(workdir.resolve())) + r"(?![\w.-])")


def portable(data: bytes, relative: pathlib.Path, workdir: pathlib.Path) -> bytes:
  """The archived form of the workdir file `relative` holding `data`: a record's absolute workdir path as
  `<workdir>`; other files unchanged."""
  if relative.suffix not in RECORD_SUFFIXES:
    return data
  return _workdir_pattern(workdir).sub(WORKDIR_TOKEN, data.decode()).encode()


def localized(data: bytes, relative: pathlib.Path, workdir: pathlib.Path) -> bytes:
  """The inverse of `portable`: the unpacked form of the archive file `relative`, for `workdir`."""
  if relative.suffix not in RECORD_SUFFIXES:
    return data
  return data.decode().replace(WORKDIR_TOKEN, str(workdir.resolve())).encode()


def _exported(folder: pathlib.Path) -> bool:
  return (folder / model_store.INFO_FILE).exists()


def _networks_exported(folder: pathlib.Path) -> bool:
  """Whether the run in `folder` exported its networks: a classifier's `model`, or a GAN's `generator` and
  `discriminator` (the GAN programs write both at the end)."""
  return _exported(folder / "model") or (_exported(folder / "generator") and _exported(folder / "discriminator"))


def skipped(relative: pathlib.Path, workdir: pathlib.Path) -> bool:
  """Whether the workdir file at `relative` stays out of the archive (see the module docstring)."""
  if relative.name.startswith("events.out.tfevents.") or relative.name.endswith(".tmp"):
    return True
  parts = relative.parts
  for i, part in enumerate(parts[:-1]):
    if part == "checkpoints" and _networks_exported(workdir.joinpath(*parts[:i])):
      return True
  return False


def archived_files(workdir: pathlib.Path) -> list[pathlib.Path]:
  """The workdir's files (relative paths, sorted) that `pack` copies."""
  return sorted(p.relative_to(workdir) for p in workdir.rglob("*")
                if p.is_file() and not skipped(p.relative_to(workdir), workdir))


def _write(destination: pathlib.Path, data: bytes) -> None:
  """Writes through `<name>.tmp` and a rename, so an interrupted copy never leaves half a file."""
  destination.parent.mkdir(parents=True, exist_ok=True)
  tmp = destination.with_name(destination.name + ".tmp")
  tmp.write_bytes(data)
  tmp.replace(destination)


def pack(workdir, archive) -> dict:
  """Mirrors `workdir` into `archive`: copies new and changed files, removes archive files the workdir no longer
  has (a finished batch's partial state, the checkpoints of a model since exported). Returns counts and bytes."""
  workdir, archive = pathlib.Path(workdir), pathlib.Path(archive)
  if not workdir.is_dir():
    raise ValueError(f"--workdir={workdir} is not a folder; give the study's workdir.")
  wanted = archived_files(workdir)
  too_big = [(f, (workdir / f).stat().st_size) for f in wanted if (workdir / f).stat().st_size > MAX_FILE_BYTES]
  if too_big:
    raise ValueError(f"{too_big[0][0]} is {too_big[0][1] / 2**20:.0f} MiB (> {MAX_FILE_BYTES >> 20} MiB): too large "
                     "to commit; leave it out of the study's workdir or archive by hand.")
  copied = 0
  for f in wanted:
    data = portable((workdir / f).read_bytes(), f, workdir)
    if not (archive / f).exists() or (archive / f).read_bytes() != data:
      _write(archive / f, data)
      copied += 1
  keep = set(wanted)
  stale = [p for p in archive.rglob("*") if p.is_file() and p.relative_to(archive) not in keep]
  for p in stale:
    p.unlink()
  for folder in sorted((p for p in archive.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
    if not any(folder.iterdir()):
      folder.rmdir()
  return {"files": len(wanted), "copied": copied, "removed": len(stale),
          "bytes": sum((workdir / f).stat().st_size for f in wanted)}


def unpack(archive, workdir) -> dict:
  """Copies the archive's files that `workdir` lacks into it; a file the workdir already has is its own (newer)
  state and is never overwritten. Returns counts."""
  workdir, archive = pathlib.Path(workdir), pathlib.Path(archive)
  if not archive.is_dir():
    raise ValueError(f"--archive={archive} is not a folder; give a study archive written by --mode=pack.")
  files = sorted(p.relative_to(archive) for p in archive.rglob("*") if p.is_file())
  missing = [f for f in files if not (workdir / f).exists()]
  for f in missing:
    _write(workdir / f, localized((archive / f).read_bytes(), f, workdir))
  return {"files": len(files), "copied": len(missing), "kept": len(files) - len(missing)}


def main(argv):
  cli.start(argv)
  mode, workdir, archive = flags.FLAGS.mode, flags.FLAGS.workdir, flags.FLAGS.archive
  counts = pack(workdir, archive) if mode == "pack" else unpack(archive, workdir)
  logging.info("%s %s -> %s: %s", mode, *((workdir, archive) if mode == "pack" else (archive, workdir)), counts)
  print(f"{mode}: {counts}")


if __name__ == "__main__":
  flags.DEFINE_enum("mode", None, MODES, "pack: workdir -> archive (to commit); unpack: archive -> workdir.")
  flags.DEFINE_string("workdir", None, "The study's workdir.")
  flags.DEFINE_string("archive", None, "The archive folder (committed), e.g. studies/numbers_study.")
  flags.mark_flags_as_required(["mode", "workdir", "archive"])
  cli.run(main, user_errors=(ValueError,))
