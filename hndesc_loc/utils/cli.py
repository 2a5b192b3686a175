"""Command-line conventions shared by every CLI of the project: each option has help text
that shows its default, and errors a user can fix end in one line, not a traceback
(set HNDESC_LOC_TRACEBACK=1 to see it)."""
from __future__ import annotations

import argparse
import os
import sys

# Help of the options that several commands share, by destination name.
COMMON_HELP = {
    "conf": "configuration name",
    "executor": "where heavy steps run: in this process (local) or on a Ray cluster (ray; RAY_ADDRESS honoured)",
    "outputs": "folder for every output of the pipeline",
    "matcher": "matcher configuration",
    "ransac_thresh": "PnP RANSAC threshold in pixels",
    "output": "output file",
    "num_loc": "retrieved database images per query",
    "dataset": "data set root in its official layout",
    "overwrite": "recompute items already in the output file (else they are skipped and the run resumes)",
    "num_matched": "pairs per image",
    "features": "hloc-format local feature file (.h5)",
    "export_dir": "folder where the output file is written (named by the conf's 'output')",
    "overrides": "conf overrides as key.sub=value (YAML values); they change the output name",
    "verbose": "show COLMAP's own log",
    "results": "results file (one 'name qw qx qy qz tx ty tz' line per query)",
    "resize_max": "longest image side in pixels",
    "query_prefix": "prefix of query image names",
    "query_list": "list of query names (one per line, first column)",
    "prepend_camera_name": "prefix names with their camera folder (InLoc/Aachen layout)",
    "pairs": "pair list, one 'name0 name1' per line",
    "nvm": "NVM model file (Aachen v1.0)",
    "num_threads": "COLMAP threads; 1 reproduces exactly, -1 uses all cores",
    "model": "COLMAP model folder",
    "matches": "hloc-format match file (.h5)",
    "intrinsics": "database intrinsics file",
    "index_type": "faiss index: flat (exact) or ivf (approximate, for millions of images)",
    "image_list": "text file of image names to process (first column), relative to --image_dir",
    "image_dir": "root folder of the images",
    "ground_truth": "ground-truth poses in the results format",
    "feature_path": "output feature file (.h5); default: export_dir/<conf output>.h5",
    "descriptors": "hloc-format global descriptor file of the queries (.h5)",
    "db_prefix": "prefix of database image names",
    "db_model": "COLMAP model whose images form the database",
    "db_list": "list of database image names",
    "db_descriptors": "global descriptor file(s) of the database, if separate",
    "database": "COLMAP database file",
    "data": "data set root in its official layout",
    "covisibility_clustering": "cluster retrieved images by covisibility before PnP (hloc's option)",
    "config": "training config (YAML)",
    "camera_mode": "COLMAP camera sharing",
    "as_half": "store descriptors and scores as float16 (keypoints stay float32)",
    "sfm_dir": "output folder of the COLMAP model",
    "reference_model": "COLMAP model with the database poses",
    "reference_sfm": "triangulated COLMAP model of the database",
    "queries": "query list with intrinsics (hloc format)",
    "retrieval": "retrieval pairs, one 'query db' per line",
    "run": "training output folder (config.json, log.csv, checkpoints)",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description kept as written; every option's help ends with its default."""

    def _get_help_string(self, action):
        help = action.help or ""
        # By identity: a default of 0 is shown (0 == False), None / False / SUPPRESS are not.
        if "%(default)" not in help and not any(action.default is v for v in (None, False, argparse.SUPPRESS)) \
                and action.option_strings:
            help += " (default: %(default)s)"
        return help


class Parser(argparse.ArgumentParser):
    """argparse with the project's conventions: help text is required (taken from COMMON_HELP
    when not given) and defaults are shown."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        # Overrides (positional key=value) may come before or after options, as users type them.
        return self.parse_intermixed_args(args, namespace)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if not action.help:
            if action.dest not in COMMON_HELP:
                raise ValueError(f"option {args[0]} has no help text: give help= or add it to COMMON_HELP")
            action.help = COMMON_HELP[action.dest]
        return action


USER_ERRORS = (FileNotFoundError, FileExistsError, ValueError, KeyError, OSError, RuntimeError, ImportError)


def run(main, *args) -> None:
    """Run a CLI entry point; an error the user can fix is printed as one line, exit status 2."""
    try:
        main(*args)
    except KeyboardInterrupt:
        sys.exit(130)
    except USER_ERRORS as e:
        if os.environ.get("HNDESC_LOC_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
