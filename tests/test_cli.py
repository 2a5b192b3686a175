"""The CLI conventions: every option's help ends with its default, whatever the default's value."""
from hndesc_loc.utils.cli import Parser


def test_help_shows_every_default_including_zero():
    p = Parser(description="d")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--ratio", type=float, default=0.0, help="ratio")
    p.add_argument("--n", type=int, default=400, help="n")
    p.add_argument("--name", default=None, help="name")
    p.add_argument("--flag", action="store_true", help="flag")
    text = " ".join(p.format_help().split())
    assert "seed (default: 0)" in text and "ratio (default: 0.0)" in text and "n (default: 400)" in text
    assert "name (default" not in text and "flag (default" not in text
