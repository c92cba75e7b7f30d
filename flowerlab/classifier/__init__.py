"""The flower classifier: the network, its LightningModule, and its evaluation metrics."""
