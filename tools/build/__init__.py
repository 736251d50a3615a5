"""What `build.py` runs: set-up, tests (QGIS 3.22 here, 3.40 in a Debian 13 root), lint, staging and packaging
the plugin, and the demo. Standard library only; the work itself runs in the project's venv."""
