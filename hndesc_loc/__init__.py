"""hndesc-loc: HNDesc local and global descriptors for hloc-style visual localization."""
import logging

__version__ = "0.1.0"

logger = logging.getLogger("hndesc_loc")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%Y/%m/%d %H:%M:%S"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def __getattr__(name):
    # `hndesc_loc.confs` is the extraction confs dict, loaded lazily so that importing
    # the package stays cheap (torch is only imported when a conf is needed).
    if name == "confs":
        from .extract_features import confs

        return confs
    raise AttributeError(name)
