"""The token-budget trainer: session (claim, resume, finish), step loop, checkpoints, parallelism.

It measures itself through the public `wattscale.Monitor` (see `wattscale.train.metering`).
"""

from wattscale.train.session import DEFAULT_CACHE_DIR, TrainResult, make_optimizer, summed_loss_fn, train, training_step

__all__ = ["DEFAULT_CACHE_DIR", "TrainResult", "make_optimizer", "summed_loss_fn", "train", "training_step"]
