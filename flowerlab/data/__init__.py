"""Data: sources, the embedded set, preparation into the uint8 store, split, transforms, DataModule."""
