"""QGIS Processing glue: the provider and its algorithms map parameters, stream blocks and relay feedback."""
