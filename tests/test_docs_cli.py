"""``meridian --help`` lists the commands the module docstring and README.md document, and
nothing else."""

from engine.cli import build_parser


def test_help_lists_only_the_documented_commands():
    text = build_parser().format_help()
    assert "SUPPRESS" not in text and "demo-writer" not in text
    for command in ("demo", "node", "cluster", "shell", "crash-demo", "bench"):
        assert f"    {command} " in text or f"    {command}\n" in text


def test_the_internal_writer_command_still_parses():
    args = build_parser().parse_args(["demo-writer", "some/dir"])
    assert (args.command, args.dir) == ("demo-writer", "some/dir")
