"""The desktop's own pieces: the map action and the install prompt; qgis_process never loads them."""
