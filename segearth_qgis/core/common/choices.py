"""Every choice list a user picks from, declared once: the Processing parameters, the command line and the core
all read them here, so a new choice appears everywhere at once."""

DEVICES = ("auto", "cuda", "cpu")                       # where a model runs
BACKENDS = ("auto", "onnx", "torch")                    # what runs a model bundle
PRECISIONS = ("fp32", "fp16")                          # float arithmetic of the encoder and SimFeatUp (fp16: CUDA)
SENSORS = ("auto", "optical", "sar")                    # how a raster is read; auto detects radar on evidence
MODALITIES = ("optical", "sar")                         # what a model bundle or a preset is for
MODEL_SOURCES = (*MODALITIES, "all")                    # what `models download` and segearth:install_model fetch
POLARISATIONS = ("VV", "VH", "HH", "HV")
ATTENTIONS = ("SegEarth", "SCLIP", "ClearCLIP", "vanilla")   # the modified last blocks the torch model implements
EVALUATION_PIPELINES = ("paper", "map")                 # evaluate: images as the papers ran them, or the map pipeline
PROFILES = ("onnx", "full")                             # dependency profiles of the installer
GPU_PACKAGES = ("auto", "cuda", "cpu")                  # which onnxruntime package the installer chooses
INSTALL_ACTIONS = ("install", "repair", "uninstall", "status")
