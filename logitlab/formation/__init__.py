"""Circuit formation during training: a toy model to train, and the battery tracked across checkpoints."""
