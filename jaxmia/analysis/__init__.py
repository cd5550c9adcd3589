"""The label-smoothing paper's analyses as importable, tested cores (the scripts in `scripts/` are thin CLIs).

Submodules (import them explicitly):
- `toy`: the 2-D toy classifier and gradient attack of Fig. 1.
- `geometry`: penultimate-feature distances (intra-/inter-class, nearest neighbours) and t-SNE, Figs. 4-5.
- `gradients`: cosine similarity of consecutive image-space attack gradients, Fig. 6b / Eq. 4.
- `runs`: a model folder's training config and dataset.
- `report`: summary statistics and JSON / markdown / PNG output shared by the scripts.
"""
