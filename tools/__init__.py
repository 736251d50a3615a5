"""Tooling outside the plugin: build/ behind build.py, dev/ for developers; the zip ships neither."""
