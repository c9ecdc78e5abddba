"""The demo recipe: synthetic data generators, the thyroid demo model and its trainer, and the cached
build of both demo models (``make model``). See README.md in this folder."""
