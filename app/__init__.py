"""imgsim serving: loads exported towers from model_store/ and answers similarity queries."""

__version__ = "0.1.0"
