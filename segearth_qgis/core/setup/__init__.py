"""The plugin's own Python packages: where they live and their installer; imports only ``common``."""
