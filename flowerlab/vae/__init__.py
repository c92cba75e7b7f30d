"""The image generator: a convolutional VAE, its LightningModule, and its metrics."""
