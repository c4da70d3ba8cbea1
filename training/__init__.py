"""The synthetic engagement world and the training that made the embedded default model.

world     users, authors and posts with latent interests; ground-truth action probabilities
train     per-action sigmoid cross-entropy with optax
evaluate  held-out ROC-AUC against a popularity baseline
manifest  the training record written beside a checkpoint
cli       `phoenix-ranker train | eval | demo`
"""
