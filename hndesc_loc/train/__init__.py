"""Self-supervised HNDesc training (`python -m hndesc_loc.train --config ...`)."""
