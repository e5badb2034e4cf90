"""What the Lightning training commands share (detector and classifier): the run folder's
checkpoints and ``--resume [auto]``, locked fields on resume, the LR schedule, the Trainer."""
