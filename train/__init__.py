"""train: build a CNN with dropout and train it on real images into a run folder."""
