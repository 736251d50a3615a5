"""Set up, test, lint, package and demo SegEarth-OV for QGIS, and run its commands in the project's environment.

Each command maps onto the module of tools/build/ that does the work; the CLI commands run in the venv.
"""

import argparse
import subprocess
import sys

from .demo import demo
from .environment import ROOT, SetupError, run_in_env, say, setup
from .plugin import package, run_qgis, stage_plugin
from .testing import lint, test

CLI_COMMANDS = {
    "segment": "segment a raster into a classified GeoTIFF without QGIS (see segment --help)",
    "evaluate": "mIoU / IoU of the model on a labelled folder, as the papers measure it (see evaluate --help)",
    "export": "export checkpoints to a validated ONNX model bundle",
    "bench": "benchmarks that print figures (bench speed, bench memory, bench parity)",
    "models": "the model store: models download [optical|sar|all], models list, models install BUNDLE",
    "train-sar": "distil a SAR model from an optical teacher on a co-registered optical/SAR pair",
}

DEVELOPER_COMMANDS = {"bench": "tools.dev.bench"}  # outside the plugin: the zip does not ship them


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] in CLI_COMMANDS and argv[1] != "--":
        argv.insert(1, "--")  # the CLI's own options (--images, --optical, ...) pass through as they are
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="install the apt packages and the venv, then check the stack")
    test_parser = sub.add_parser("test", help="set up, lint, then run the whole test suite headless")
    test_parser.add_argument("--qgis", choices=["3.22", "3.40"], default="3.22",
                             help="3.22: Debian 12's QGIS on this machine; 3.40: the QGIS tests in a Debian 13 root")
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="extra pytest arguments after --")
    sub.add_parser("lint", help="ruff over the whole tree")
    sub.add_parser("demo", help="the main job: segearth:segment via qgis_process on a generated GeoTIFF, a preview")
    qgis_parser = sub.add_parser("qgis", help="qgis_process.bin with this checkout's plugin in an isolated profile")
    qgis_parser.add_argument("qgis_args", nargs=argparse.REMAINDER, help="after --, e.g. -- run segearth:segment ...")
    package_parser = sub.add_parser("package", help="build the plugin zip (out/segearth_qgis-VERSION.zip)")
    package_parser.add_argument("--out", default=str(ROOT / "out"), help="folder for the zip")
    for name, text in CLI_COMMANDS.items():
        cli_parser = sub.add_parser(name, help=text, add_help=False)
        cli_parser.add_argument("cli_args", nargs=argparse.REMAINDER, help="see: python3 build.py NAME --help")
    stage_parser = sub.add_parser("stage", help="stage the installable plugin folder")
    stage_parser.add_argument("--out", default=str(ROOT / "out" / "plugin"), help="folder to hold segearth_qgis/")
    run_parser = sub.add_parser("run", help="run any command inside the project's environment")
    run_parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)

    try:
        venv = setup()
    except SetupError as error:
        say(f"set-up failed: {error}")
        return 2
    except subprocess.CalledProcessError as error:
        say(f"set-up failed: {' '.join(map(str, error.cmd))} exited with {error.returncode}")
        return 2

    if args.command == "setup":
        return 0
    if args.command == "lint":
        return lint(venv)
    if args.command == "demo":
        return demo(venv)
    if args.command == "qgis":
        return run_qgis(venv, strip_separator(args.qgis_args))
    if args.command == "package":
        try:
            package(args.out, venv)
        except SetupError as error:
            say(f"package failed: {error}")
            return 1
        return 0
    if args.command == "test":
        try:
            return test(venv, strip_separator(args.pytest_args), args.qgis)
        except SetupError as error:
            say(f"test --qgis {args.qgis} failed: {error}")
            return 2
        except subprocess.CalledProcessError as error:
            say(f"test --qgis {args.qgis} failed: {' '.join(map(str, error.cmd))} exited with {error.returncode}")
            return 2
        except KeyboardInterrupt as interrupt:
            say(f"test --qgis {args.qgis} cancelled ({interrupt or 'SIGINT'})")
            return 130
    if args.command in CLI_COMMANDS:
        module = DEVELOPER_COMMANDS.get(args.command, "segearth_qgis.cli")
        command = [] if args.command in DEVELOPER_COMMANDS else [args.command]
        return run_in_env(venv, [str(venv / "bin" / "python"), "-m", module, *command,
                                 *strip_separator(args.cli_args)])
    if args.command == "stage":
        say(f"staged {stage_plugin(args.out)}")
        return 0
    if args.command == "run":
        cmd = strip_separator(args.cmd)
        if not cmd:
            parser.error("run needs a command: python3 build.py run -- CMD ARGS...")
        return run_in_env(venv, cmd)
    return 2


def strip_separator(args):
    return args[1:] if args and args[0] == "--" else args
