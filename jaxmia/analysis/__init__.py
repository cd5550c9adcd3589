"""The label-smoothing paper's analyses as importable, tested cores (the scripts in `scripts/` are thin CLIs).

Submodules (import them explicitly):
- `toy`: the 2-D toy classifier and gradient attack of Fig. 1.
- `report`: summary statistics and JSON / markdown / PNG output shared by the scripts.
"""
