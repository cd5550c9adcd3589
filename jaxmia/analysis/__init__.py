"""The label-smoothing paper's analyses as importable, tested cores (the scripts in `scripts/` are thin CLIs).

Submodules (import them explicitly):
- `toy`: the 2-D toy classifier and gradient attack of Fig. 1 (`scripts/toy_2d.py`).
- `geometry`: penultimate-feature distances (intra-/inter-class, nearest neighbours) and t-SNE, Figs. 4-5
  (`scripts/embedding_geometry.py`).
- `gradients`: cosine similarity of consecutive image-space attack gradients, Fig. 6b / Eq. 4
  (`scripts/gradient_stability.py`).
- `ablation`: attack stages run against models of different α, Tables 5-7 (`scripts/stage_ablation.py`).
- `sweep`: train / attack / evaluate over α and training-set sizes, Fig. 2 (`scripts/sweep.py`).
- `runs`: a model folder's training config and dataset.
- `tables`: mean ± sd text, markdown tables and the JSON / markdown output shared by the scripts.
"""
