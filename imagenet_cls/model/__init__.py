"""The model: ``ClassificationModel`` (LightningModule) and the pieces it is built from."""
