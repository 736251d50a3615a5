"""The core's ground floor: feedback, files, downloads, data files and choice lists, with no heavy import."""
