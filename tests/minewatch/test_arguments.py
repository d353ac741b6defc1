"""A job's declared options read the same through argparse (``run(argv)``) and click (the CLI)."""

import click
import pytest
from click.testing import CliRunner

from minewatch.arguments import Choice, Flag, Float, Int, Names, Switch, Text, parse, split_names
from minewatch.cli.options import click_error, click_options
from minewatch.errors import ConfigError

ARGS = (
    Text("--out", required=True, metavar="DIR", help="Where (100% local)."),
    Int("--size", low=8, high=64, default=16, show_default=True, help="Side."),
    Float("--share", low=0, low_open=True, help="A share."),
    Choice("--edge", ("shift", "pad"), default="shift", help="Edge."),
    Flag("--sparse", help="Sparse."),
    Switch("--weak/--no-weak", default=True, help="Weak."),
    Names("--bands", metavar="NAMES", help="Bands."),
    Int("--seed", default=0, help="Seed."),
    Int("--trees", low=1, default=1, aliases=("--rounds",), help="Trees."),
)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("inputs", nargs=-1, type=click.UNPROCESSED)
@click_options(ARGS)
def cmd(**params):
    """A command."""


def via_click(argv):
    with cmd.make_context("cmd", list(argv)) as ctx:
        params = dict(ctx.params)
        return params, [*params.pop("inputs"), *ctx.args]


@pytest.mark.parametrize(
    "argv",
    [
        ["a.tif", "--out", "o"],
        ["a.tif", "b.tif", "--out", "o", "--size", "32", "--share", "0.5", "--edge", "pad"],
        ["a.tif", "--out", "o", "--trees", "3"],
        ["a.tif", "--out", "o", "--rounds", "3"],
        ["--out", "o", "--sparse", "--no-weak", "--bands", "B02, B03", "--seed", "-3", "a"],
        ["a", "--out=o", "--runner", "DirectRunner", "--direct_num_workers=2"],
    ],
)
def test_argparse_and_click_give_the_same_params_and_leave_the_same_rest(argv):
    params, rest = parse(ARGS, argv, "cmd")
    assert (params, rest) == via_click(argv)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--out", "o", "--size", "4"], "not in the range 8<=x<=64"),
        (["--out", "o", "--size", "x"], "not a valid int"),
        (["--out", "o", "--share", "0"], "not in the range 0<x"),
        (["--out", "o", "--edge", "drop"], "invalid choice"),
        (["--out", "o", "--bands", "B02,,B03"], "empty item"),
        (["--size", "16"], "--out"),
    ],
)
def test_bad_values_raise_config_error_and_click_refuses_them_too(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse(ARGS, argv, "cmd")
    with pytest.raises(click.UsageError):
        via_click(argv)


def test_options_are_not_abbreviated_so_beam_options_pass_through():
    params, rest = parse(ARGS, ["--out", "o", "--si", "32"], "cmd")
    assert params["size"] == 16 and rest == ["--si", "32"]


def test_help_shows_the_declared_texts_in_both():
    text = CliRunner().invoke(cmd, ["--help"]).output
    assert "100% local" in text and "8<=x<=64" in text and "--weak / --no-weak" in text
    with pytest.raises(SystemExit):  # argparse prints the help and exits, as a script does
        parse(ARGS, ["--help"], "cmd")


def test_split_names_and_click_error():
    assert split_names(" a, b ") == ("a", "b") and split_names(None) == ()
    bad = click_error(ConfigError("no such file", option="--labels"))
    assert isinstance(bad, click.BadParameter) and "--labels" in bad.format_message()
    assert type(click_error(ConfigError("give an INPUT"))) is click.UsageError


def test_a_switch_must_be_written_as_a_pair():
    with pytest.raises(ValueError, match="--name/--no-name"):
        Switch("--weak", default=True)


def test_an_alias_fills_the_options_own_name_in_both():
    for argv in (["--out", "o", "--rounds", "4"], ["--out", "o", "--trees", "4"]):
        params, _ = parse(ARGS, argv, "cmd")
        assert params["trees"] == 4 and "rounds" not in params
        assert via_click(argv)[0]["trees"] == 4
    with pytest.raises(ConfigError, match="--rounds"):
        parse(ARGS, ["--out", "o", "--rounds", "0"], "cmd")
    with pytest.raises(ValueError, match="no aliases"):
        Switch("--weak/--no-weak", default=True, aliases=("--feeble",))
