"""Side-by-side sample grids of GAN runs (the `samples/*.png` the GAN programs write), one panel each.

    python scripts/gan_samples_figure.py --out=docs/figures/lowres_study/gans.png \
        --panel="public numbers=runs/numbers_study/gan_gmi/samples/reals.png" \
        --panel="GMI GAN, 7,800 it.=runs/numbers_study/gan_gmi/samples/fakes_0007800.png"
"""
from absl import app, flags
import numpy as np
from PIL import Image

from jaxmia import files

flags.DEFINE_multi_string("panel", [], "'title=path of a sample grid PNG', in order.")
flags.DEFINE_string("out", None, "Output PNG.")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.panel:
    raise app.UsageError("Give at least one --panel='title=path'.")
  panels = [p.split("=", 1) for p in FLAGS.panel]
  plt = files.pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
  for ax, (title, path) in zip(np.atleast_1d(axes), panels):
    ax.imshow(np.asarray(Image.open(path).convert("RGB")))
    ax.set_title(title, fontsize=8)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(FLAGS.out, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
