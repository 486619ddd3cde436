"""PRNG salts: each random stream of a run is ``jax.random.fold_in(jax.random.key(seed), SALT)``, one salt each.

The network's initial weights take ``jax.random.key(seed)`` itself. Keys inside a stream derive from it by
``fold_in`` of the epoch, step or item, so a resumed run draws exactly the keys an uninterrupted one draws.
"""

DATA = 1  # the simulated item table and the split of items or images into train, test and validation
EPOCH_ORDER = 2  # the training items' shuffled order in each epoch
REFINE_ORDER = 3  # the refinement table rows' shuffled order in each refinement epoch
LOCS_ANGLES = 4  # the in-plane angle each localisation particle is drawn at, per step
HALVES = 5  # the split of the training items into two halves for a half-set run
RELOCATE = 6  # the offsets of stray points relocated during refinement, per step
