"""imgsim training: metric-learning trainer that exports towers per app/artifact.py."""
