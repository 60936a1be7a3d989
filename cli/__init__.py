"""The `digits` command: the composition root, which may import api/, worker/ and shared/."""
