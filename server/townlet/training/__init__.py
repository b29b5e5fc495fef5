"""Training-side code: Hamlet-layout v2 training checkpoints (and, later, a compact DQN trainer)."""
