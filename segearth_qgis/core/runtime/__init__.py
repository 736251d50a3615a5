"""Model bundles and what runs them: the store, the loader, the ONNX backend and its sessions, export."""
